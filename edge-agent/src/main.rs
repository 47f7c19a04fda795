//! `edgesync-agent`: placeholder entry point until issue #5; exits 2 so nothing mistakes it for a service.

fn main() -> std::process::ExitCode {
    eprintln!("{}", edgesync_agent::NOT_BUILT);
    std::process::ExitCode::from(2)
}

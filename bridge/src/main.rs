//! `edgesync-bridge`: placeholder entry point until issue #6; exits 2 so nothing mistakes it for a service.

fn main() -> std::process::ExitCode {
    eprintln!("{}", edgesync_bridge::NOT_BUILT);
    std::process::ExitCode::from(2)
}

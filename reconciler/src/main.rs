//! `edgesync-reconciler`: placeholder entry point until issue #7; exits 2 so nothing mistakes it for a service.

fn main() -> std::process::ExitCode {
    eprintln!("{}", edgesync_reconciler::NOT_BUILT);
    std::process::ExitCode::from(2)
}

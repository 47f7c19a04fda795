//! `fuzz-seeds DIR`: writes every seed input into `DIR/<target>/seed-<n>` (a corpus to start
//! from; files already there are kept).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fuzz-seeds DIR");
        return ExitCode::from(2);
    };
    for (n, (target, bytes)) in edgesync_fuzzing::seeds().into_iter().enumerate() {
        let d = dir.join(target);
        let written = std::fs::create_dir_all(&d)
            .and_then(|()| std::fs::write(d.join(format!("seed-{n}")), bytes));
        if let Err(e) = written {
            eprintln!("fuzz-seeds: {}: {e}", d.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

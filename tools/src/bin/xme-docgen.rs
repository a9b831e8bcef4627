//! `xme-docgen DIR`: writes the man pages and shell completions of
//! `xen-mem-event`, generated from its clap definitions
//! (`xen_mem_event_tools::cli`), into `DIR/man` and `DIR/completions`.
//! Run at package time (`make deb`); nothing it writes is checked in.
//!
//! - `man/xen-mem-event.1`, and one page per subcommand,
//!   `man/xen-mem-event-SUB.1` (`man xen-mem-event-pager`);
//! - `completions/xen-mem-event` (bash), `completions/_xen-mem-event`
//!   (zsh), `completions/xen-mem-event.fish`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_complete::Shell;

const BIN: &str = "xen-mem-event";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: xme-docgen DIR");
        return ExitCode::from(2);
    };
    match generate(Path::new(&dir)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xme-docgen: {e}");
            ExitCode::from(1)
        }
    }
}

/// Writes every page and completion file; returns their paths.
fn generate(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    fs::create_dir_all(&man)?;
    fs::create_dir_all(&completions)?;
    let mut written = Vec::new();

    let mut cmd = xen_mem_event_tools::cli::command();
    // Subcommands get their full name (`xen-mem-event pager`) in usage.
    cmd.build();
    for page in xen_mem_event_tools::cli::man_pages(&cmd) {
        let path = man.join(format!("{}.1", page.name));
        let mut buf = Vec::new();
        page.render(&mut buf)?;
        fs::write(&path, buf)?;
        written.push(path);
    }

    for (shell, file) in [
        (Shell::Bash, BIN.to_owned()),
        (Shell::Zsh, format!("_{BIN}")),
        (Shell::Fish, format!("{BIN}.fish")),
    ] {
        let path = completions.join(file);
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd, BIN, &mut buf);
        fs::write(&path, buf)?;
        written.push(path);
    }
    Ok(written)
}

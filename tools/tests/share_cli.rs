//! `xen-mem-event share` on the command line: usage errors, no Xen.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use assert_cmd::Command;
use predicates::prelude::*;

fn tool() -> Command {
    Command::cargo_bin("xen-mem-event").unwrap()
}

#[test]
fn share_usage_errors_exit_2() {
    tool()
        .arg("share")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--domain"));
    tool()
        .args(["share", "--all", "--domain", "1"])
        .assert()
        .code(2);
    tool()
        .args(["share", "--all", "--pages-per-sec", "many"])
        .assert()
        .code(2);
    tool()
        .args(["share", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("--no-invalidate"));
}

#[test]
fn share_without_xen_says_so_and_exits_1() {
    if std::path::Path::new("/dev/xen/privcmd").exists() {
        return;
    }
    tool()
        .args(["share", "--domain", "1", "--domain", "2"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("not running in a Xen dom0"));
    tool()
        .args(["share", "--all", "--interval", "0"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("must be positive"));
}

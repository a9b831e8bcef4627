//! The command line: parsing, help, exit codes, errors without Xen.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use assert_cmd::Command;
use predicates::prelude::*;

fn tool() -> Command {
    Command::cargo_bin("xen-mem-event").unwrap()
}

fn on_xen() -> bool {
    std::path::Path::new("/dev/xen/privcmd").exists()
}

#[test]
fn help_has_examples_and_every_subcommand() {
    let out = tool().arg("--help").assert().success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    for word in [
        "status",
        "pager",
        "watch",
        "register",
        "unregister",
        "Examples:",
        "--json",
    ] {
        assert!(text.contains(word), "--help lacks {word}");
    }
    for sub in ["status", "pager", "watch", "register", "unregister"] {
        tool()
            .args([sub, "--help"])
            .assert()
            .success()
            .stdout(predicate::str::contains("Usage: xen-mem-event"));
    }
    tool()
        .args(["pager", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("--on-failure"));
}

#[test]
fn usage_errors_exit_2() {
    tool().assert().code(2);
    tool().arg("frobnicate").assert().code(2);
    tool()
        .arg("pager")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--domain"));
    tool()
        .args(["register", "--domain", "1", "--type", "bogus"])
        .assert()
        .code(2);
    tool()
        .args(["pager", "--domain", "1", "--on-failure", "maybe"])
        .assert()
        .code(2);
    tool()
        .args(["pager", "--domain", "1", "--step", "5", "--exec", "true"])
        .assert()
        .code(2);
    tool()
        .args(["watch", "--domain", "1", "--batch", "x"])
        .assert()
        .code(2);
    for sub in ["pager", "watch"] {
        tool()
            .args([sub, "--all", "--domain", "1"])
            .assert()
            .code(2)
            .stderr(predicate::str::contains("cannot be used with"));
    }
}

#[test]
fn without_xen_every_command_says_so_and_exits_1() {
    let cmds: [&[&str]; 8] = [
        &["status"],
        &["status", "--domain", "3", "--json"],
        &["pager", "--domain", "3"],
        &["watch", "--domain", "3"],
        &["pager", "--all"],
        &["watch", "--all", "--json"],
        &["register", "--domain", "3", "--type", "oom"],
        &["unregister", "--domain", "3", "--type", "invalidate"],
    ];
    for args in cmds {
        let a = tool().args(args).assert();
        if on_xen() {
            // A dom0 (of the test machine, not of the VM tier): whatever
            // the outcome, never a usage error or a panic.
            let code = a.get_output().status.code();
            assert!(matches!(code, Some(0 | 1)), "{args:?}: {code:?}");
        } else {
            a.code(1)
                .stdout(predicate::str::is_empty())
                .stderr(predicate::str::diff(
                    "xen-mem-event: not running in a Xen dom0 (no /dev/xen/privcmd): nothing to \
                        attach to\n",
                ));
        }
    }
}

#[test]
fn bad_values_are_runtime_errors_with_one_line() {
    // Checked before Xen is opened: the same on any machine.
    tool()
        .args(["watch", "--domain", "3", "--interval", "0"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "--interval must be a positive number",
        ));
    tool()
        .args(["watch", "--domain", "3", "--interval", "-1"])
        .assert()
        .code(2);
}

/// Huge intervals saturate instead of panicking (`Duration::from_secs_f64`
/// panics on 1e30): the tool gets as far as Xen.
#[test]
fn huge_seconds_saturate() {
    for args in [
        &["watch", "--domain", "3", "--interval", "1e30"][..],
        &["watch", "--domain", "3", "--idle-exit", "1e30"][..],
    ] {
        let code = tool().args(args).assert().get_output().status.code();
        assert!(
            matches!(code, Some(0 | 1)),
            "{args:?}: exit {code:?} (101 is a panic)"
        );
    }
}

#[test]
fn batch_of_an_oom_ring_is_a_usage_error() {
    tool()
        .args([
            "register", "--domain", "1", "--type", "oom", "--batch", "64",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--batch"));
}

/// `--exec CMD -- ARGS`: arguments beginning with a dash reach the command
/// (parsing succeeds: the tool gets as far as Xen).
#[test]
fn exec_arguments_after_double_dash() {
    let a = tool()
        .args([
            "pager",
            "--domain",
            "3",
            "--exec",
            "/bin/echo",
            "--",
            "-n",
            "--flag",
        ])
        .assert();
    let code = a.get_output().status.code();
    assert!(matches!(code, Some(0 | 1)), "exit {code:?}");
    // Arguments without --exec are refused.
    tool()
        .args(["pager", "--domain", "3", "--", "-n"])
        .assert()
        .code(2);
}

#[test]
fn unregister_takes_a_token_and_says_what_it_does_without() {
    tool()
        .args(["unregister", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("--token"))
        .stdout(predicate::str::contains("taken over explicitly"));
    tool()
        .args([
            "unregister",
            "--domain",
            "1",
            "--type",
            "oom",
            "--token",
            "0",
        ])
        .assert()
        .code(2);
}

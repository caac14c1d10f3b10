//! Secrets from files: the robot's key and the S3 and LiveKit secrets given as the variable,
//! as `<NAME>_FILE`, or as a systemd credential in `$CREDENTIALS_DIRECTORY`; two sources, an
//! open, empty or not-a-file secret refused at start with one line; `check` says where each
//! came from. The binary as a process, the fixture zooid, a real database.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

/// The robot's public key, hex, for [`ROBOT_SECRET`].
fn robot_hex() -> String {
    robot().public_key().to_hex()
}

/// Writes `text` to `dir/name` with `mode`.
fn secret_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// `zooid-sync` without ROBOT_SECRET in its environment.
fn without_key(fx: &zooid_sync::fixture::FixtureZooid, db: &Path) -> Command {
    let mut cmd = zooid_sync(fx, db);
    cmd.env_remove("ROBOT_SECRET");
    cmd
}

/// A refusal case: the variables naming paths, whether ROBOT_SECRET stays in the environment
/// too, and what the one line must say.
type Case<'a> = (Vec<(&'a str, &'a Path)>, bool, &'a str);

fn stdout(cmd: Command) -> (Option<i32>, String, String) {
    let out = output(cmd);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_robots_key_from_a_file_or_a_credential_signs_what_zooid_accepts() {
    let (fx, dir, db, store) = one_relay("alpha");
    let file = secret_file(dir.path(), "key", &format!("{ROBOT_SECRET}\n"), 0o600);
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    secret_file(
        &credentials,
        "robot_secret",
        &format!("{ROBOT_SECRET}\n"),
        0o400,
    );
    let sources: [(&str, &str); 2] = [
        ("ROBOT_SECRET_FILE", file.to_str().unwrap()),
        ("CREDENTIALS_DIRECTORY", credentials.to_str().unwrap()),
    ];
    for (n, (var, value)) in sources.into_iter().enumerate() {
        let (code, out, err) = stdout({
            let mut c = without_key(&fx, &db);
            c.arg("pubkey").env(var, value);
            c
        });
        assert_eq!(code, Some(0), "{var}: {err}");
        assert!(out.contains(&robot_hex()), "{var}: {out}");
        let mut relay = settings("alpha");
        relay.info_name = format!("signed by the key from {var}");
        store.command.update_relay("alpha", &relay).unwrap();
        let (code, out, err) = stdout({
            let mut c = without_key(&fx, &db);
            c.args(["sync", "alpha"]).env(var, value);
            c
        });
        assert_eq!(code, Some(0), "{var}: {out}{err}");
        assert_eq!(fx.relay("alpha").unwrap()["info"]["name"], relay.info_name);
        assert_eq!(fx.requests().len(), n + 1, "one accepted request each");
    }
}

#[test]
fn the_s3_and_livekit_secrets_come_from_files_and_credentials_too() {
    let (fx, dir, db, store) = one_relay("alpha");
    let mut relay = settings("alpha");
    relay.blossom_enabled = true;
    relay.livekit_enabled = true;
    store.command.update_relay("alpha", &relay).unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    secret_file(&credentials, "robot_secret", ROBOT_SECRET, 0o400);
    secret_file(
        &credentials,
        "blossom_s3_secret_key",
        "s3-from-credential\n",
        0o400,
    );
    let lk = secret_file(dir.path(), "lk", "lk-from-file\n", 0o640);
    let (code, out, err) = stdout({
        let mut c = without_key(&fx, &db);
        c.args(["sync", "alpha"])
            .env("CREDENTIALS_DIRECTORY", &credentials)
            .env("BLOSSOM_S3_ENDPOINT", "https://s3.example.com")
            .env("BLOSSOM_S3_REGION", "r")
            .env("BLOSSOM_S3_BUCKET", "b")
            .env("BLOSSOM_S3_ACCESS_KEY", "a")
            .env("LIVEKIT_URL", "wss://lk.example.com")
            .env("LIVEKIT_API_KEY", "k")
            .env("LIVEKIT_API_SECRET_FILE", &lk);
        c
    });
    assert_eq!(code, Some(0), "{out}{err}");
    let at_zooid = fx.relay("alpha").unwrap();
    assert_eq!(
        at_zooid["blossom"]["s3"]["secret_key"],
        "s3-from-credential"
    );
    assert_eq!(at_zooid["livekit"]["api_secret"], "lk-from-file");
}

#[test]
fn two_sources_an_open_file_a_directory_or_an_empty_file_stop_the_start() {
    let (fx, dir, db, _store) = one_relay("alpha");
    let good = secret_file(dir.path(), "good", ROBOT_SECRET, 0o600);
    let open = secret_file(dir.path(), "open", ROBOT_SECRET, 0o644);
    let empty = secret_file(dir.path(), "empty", "\n", 0o600);
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    secret_file(&credentials, "robot_secret", ROBOT_SECRET, 0o400);
    let cases: Vec<Case> = vec![
        // (variables, ROBOT_SECRET kept in the environment too, what the line must say)
        (
            vec![("ROBOT_SECRET_FILE", &good)],
            true,
            "ROBOT_SECRET is given twice, by the variable ROBOT_SECRET and by ROBOT_SECRET_FILE",
        ),
        (
            vec![
                ("ROBOT_SECRET_FILE", &good),
                ("CREDENTIALS_DIRECTORY", &credentials),
            ],
            false,
            "ROBOT_SECRET is given twice, by ROBOT_SECRET_FILE",
        ),
        (vec![("ROBOT_SECRET_FILE", &open)], false, "has mode 0644"),
        (
            vec![("ROBOT_SECRET_FILE", dir.path())],
            false,
            "is a directory",
        ),
        (vec![("ROBOT_SECRET_FILE", &empty)], false, "is empty"),
        (
            vec![("LIVEKIT_API_SECRET_FILE", &open)],
            true,
            "LIVEKIT_API_SECRET_FILE: ",
        ),
    ];
    for (vars, keep_variable, says) in cases {
        let (code, out, err) = stdout({
            let mut c = zooid_sync(&fx, &db);
            if !keep_variable {
                c.env_remove("ROBOT_SECRET");
            }
            for (var, path) in &vars {
                c.env(var, path);
            }
            c.args(["run", "--feed-interval", "10ms"]);
            c
        });
        assert_eq!(code, Some(2), "{vars:?}: {out}{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(says), "{vars:?} says {says:?}: {err}");
        assert!(!err.contains(ROBOT_SECRET), "no secret in the error: {err}");
        if says.contains("mode") {
            assert!(
                err.contains("chmod 600") && err.contains(open.to_str().unwrap()),
                "{err}"
            );
        }
    }
    assert!(fx.requests().is_empty(), "nothing was sent");
}

#[test]
fn check_says_where_each_secret_came_from_and_warns_of_the_environment_under_systemd() {
    let (fx, dir, db, _store) = one_relay("alpha");
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    secret_file(&credentials, "robot_secret", ROBOT_SECRET, 0o400);
    let s3 = secret_file(dir.path(), "s3", "s3-secret", 0o600);
    let (code, out, _) = stdout({
        let mut c = without_key(&fx, &db);
        c.arg("check")
            .env("CREDENTIALS_DIRECTORY", &credentials)
            .env("BLOSSOM_S3_SECRET_KEY_FILE", &s3)
            .env("LIVEKIT_API_SECRET", "lk-secret");
        c
    });
    assert_eq!(code, Some(0), "{out}");
    let robot_line = format!(
        "ok   secrets: ROBOT_SECRET from credential robot_secret ({})",
        credentials.join("robot_secret").display()
    );
    assert!(out.lines().any(|l| l == robot_line), "{out}");
    assert!(
        out.contains(&format!(
            "ok   secrets: BLOSSOM_S3_SECRET_KEY from BLOSSOM_S3_SECRET_KEY_FILE ({})",
            s3.display()
        )),
        "{out}"
    );
    assert!(
        out.contains("ok   secrets: LIVEKIT_API_SECRET from the variable LIVEKIT_API_SECRET"),
        "{out}"
    );
    for secret in [ROBOT_SECRET, "s3-secret", "lk-secret"] {
        assert!(!out.contains(secret), "check printed a secret: {out}");
    }
    // Under systemd, a secret still in the environment is warned about, and passes.
    let (code, out, _) = stdout({
        let mut c = zooid_sync(&fx, &db);
        c.arg("check").env("INVOCATION_ID", "0123456789abcdef");
        c
    });
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with(
            "WARN secrets: ROBOT_SECRET comes from the environment under systemd: move it"
        )),
        "{out}"
    );
}

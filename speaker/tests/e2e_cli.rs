//! The binary refuses to start without a usable membership key, and says why.

use std::process::Command;

fn speaker() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lodestone-speaker"));
    c.env_remove("LODESTONE_MEMBERLIST_KEY")
        .env("NODE_NAME", "node-a")
        // Never reached: the key is checked before any client is built.
        .env("KUBECONFIG", "/nonexistent/kubeconfig");
    c
}

#[test]
fn refuses_to_start_without_a_key() {
    let missing = std::env::temp_dir().join(format!("lodestone-no-key-{}", std::process::id()));
    let out = speaker()
        .args(["--memberlist-key-file", missing.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no membership key"), "{stderr}");
    assert!(stderr.contains("LODESTONE_MEMBERLIST_KEY"), "{stderr}");
}

#[test]
fn refuses_a_short_key_from_file_or_env() {
    let file = std::env::temp_dir().join(format!("lodestone-short-key-{}", std::process::id()));
    std::fs::write(&file, "short\n").unwrap();
    let out = speaker()
        .args(["--memberlist-key-file", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_file(&file);
    assert!(stderr.contains("the membership key is 5 bytes"), "{stderr}");

    let out = speaker()
        .env("LODESTONE_MEMBERLIST_KEY", "tiny")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the membership key is 4 bytes"), "{stderr}");
}

#[test]
fn a_good_key_gets_past_the_check() {
    // With a valid key the next failure is the missing kubeconfig, proving the key was taken.
    let out = speaker()
        .env("LODESTONE_MEMBERLIST_KEY", "0123456789abcdef0123")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("membership key"), "{stderr}");
    assert!(stderr.contains("Kubernetes client"), "{stderr}");
}

//! The reusable guards: `NetNs` and `Cgroup`. Root only.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use clustermesh_lab::cgroup::{Cgroup, cgroup2_root};
use clustermesh_lab::netns::NetNs;
use common::{eventually, require_root, unique};

#[test]
fn netns_runs_code_inside_and_is_deleted_on_drop() {
    if !require_root() {
        return;
    }
    let name = unique("cmltest-ns-");
    let ns = NetNs::create(&name).unwrap();
    assert!(NetNs::exists(&name));
    assert!(NetNs::create(&name).is_err(), "creating twice must fail");

    // A listener inside the namespace on its loopback, a client inside it too.
    let listener = ns
        .run(|| TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(b"hello from inside\n").unwrap();
    });
    let mut got = String::new();
    ns.run(|| TcpStream::connect(("127.0.0.1", port)))
        .unwrap()
        .unwrap()
        .read_to_string(&mut got)
        .unwrap();
    server.join().unwrap();
    assert_eq!(got, "hello from inside\n");

    // The same port on the host's loopback is not that listener (it is another namespace).
    let outside =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200));
    if let Ok(mut s) = outside {
        let mut other = String::new();
        let _ = s.read_to_string(&mut other);
        assert_ne!(other, "hello from inside\n");
    }

    // A spawned command sees the namespace's interfaces (only `lo`).
    let out = ns.command("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        links.lines().count(),
        1,
        "a new namespace has only lo: {links}"
    );

    // Processes left inside are killed when the guard drops.
    let mut sleeper = ns
        .command("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    eventually(
        "sleep to show up in the namespace",
        Duration::from_secs(5),
        || ns.pids().contains(&sleeper.id()).then_some(()),
    );
    drop(ns);
    assert!(!NetNs::exists(&name), "namespace must be gone after drop");
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "the sleeper must have been killed");
}

#[test]
fn netns_open_does_not_delete() {
    if !require_root() {
        return;
    }
    let name = unique("cmltest-ns-");
    let owner = NetNs::create(&name).unwrap();
    drop(NetNs::open(&name).unwrap());
    assert!(NetNs::exists(&name), "open() must not delete on drop");
    owner.delete().unwrap();
    assert!(!NetNs::exists(&name));
    assert!(NetNs::open(&name).is_err());
}

#[test]
fn cgroup_holds_pids_and_is_removed_with_them_on_drop() {
    if !require_root() {
        return;
    }
    let top = unique("cmltest-cg-");
    let relative = format!("{top}/inner");
    let cg = Cgroup::create(&relative).unwrap();
    let root = cgroup2_root().unwrap();
    assert!(root.join(&relative).is_dir());

    let mut child = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    cg.add_pid(child.id()).unwrap();
    assert_eq!(cg.pids_recursive(), vec![child.id()]);

    drop(cg);
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the process in the cgroup must have been killed"
    );
    assert!(
        !root.join(&top).exists(),
        "both created directories must be gone"
    );
}

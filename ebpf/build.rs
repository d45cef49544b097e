//! Compiles the C eBPF programs in `src/bpf/` into one object that `src/lib.rs`
//! embeds with `aya::include_bytes_aligned!`.
//!
//! Needs clang (`CLANG` overrides which one; default `clang-14`, then `clang`)
//! and the libbpf headers (`apt-get install clang-14 libbpf-dev`).

use std::{
    env,
    path::PathBuf,
    process::{Command, Output},
};

const SOURCE: &str = "src/bpf/datapath.bpf.c";
const HEADER: &str = "src/bpf/datapath.h";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-changed={HEADER}");
    println!("cargo:rerun-if-env-changed=CLANG");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join("datapath.bpf.o");

    let mut args: Vec<String> = vec![
        "-target".into(),
        "bpf".into(),
        "-O2".into(),
        "-g".into(),
        "-Wall".into(),
        "-Werror".into(),
    ];
    // <linux/types.h> includes <asm/types.h>, which Debian keeps under the
    // multiarch directory that `-target bpf` does not search by itself.
    if let Some(multiarch) = host_multiarch() {
        args.push(format!("-I/usr/include/{multiarch}"));
    }
    args.extend([
        "-c".into(),
        SOURCE.into(),
        "-o".into(),
        object.display().to_string(),
    ]);

    let candidates: Vec<String> = match env::var("CLANG") {
        Ok(clang) => vec![clang],
        Err(_) => vec!["clang-14".into(), "clang".into()],
    };
    for clang in &candidates {
        match Command::new(clang).args(&args).output() {
            Ok(output) if output.status.success() => return,
            Ok(output) => fail(clang, &output),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => panic!("could not run {clang}: {error}"),
        }
    }
    panic!(
        "no clang found (tried {candidates:?}); install it with `apt-get install clang-14 libbpf-dev` \
         or point CLANG at one"
    );
}

fn host_multiarch() -> Option<String> {
    let output = Command::new("cc").arg("-print-multiarch").output().ok()?;
    let multiarch = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (!multiarch.is_empty()).then_some(multiarch)
}

fn fail(clang: &str, output: &Output) -> ! {
    panic!(
        "{clang} failed to compile {SOURCE}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

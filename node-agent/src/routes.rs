//! Routes for the mesh VIP ranges: `local <range> dev lo` in the node's network namespace, so
//! a connection to a mesh VIP is delivered on this node, where the sk_lookup program hands it
//! to the tunnel listener. `ip route replace` makes setting them idempotent.

use std::path::{Path, PathBuf};
use std::process::Command;

use ipnet::IpNet;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("could not run `{command}`: {source} (are iproute2 and util-linux installed?)")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr} (the agent needs CAP_NET_ADMIN in {netns})")]
    Failed {
        command: String,
        stderr: String,
        netns: PathBuf,
    },
}

/// The namespace file that means "where this process runs".
pub const OWN_NETNS: &str = "/proc/self/ns/net";

/// Sets `local <range> dev lo` for every range in the namespace `netns`.
pub fn ensure_mesh_routes(netns: &Path, ranges: &[IpNet]) -> Result<(), RouteError> {
    for range in ranges {
        let range = range.trunc().to_string();
        let ip_args = ["route", "replace", "local", range.as_str(), "dev", "lo"];
        let mut command = if netns == Path::new(OWN_NETNS) {
            let mut c = Command::new("ip");
            c.args(ip_args);
            c
        } else {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", netns.display()))
                .arg("ip")
                .args(ip_args);
            c
        };
        let described = format!("{command:?}");
        let output = command.output().map_err(|source| RouteError::Spawn {
            command: described.clone(),
            source,
        })?;
        if !output.status.success() {
            return Err(RouteError::Failed {
                command: described,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                netns: netns.to_owned(),
            });
        }
    }
    Ok(())
}

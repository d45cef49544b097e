//! `clustermesh-terraform-checks [DIR]`: runs the checks over a Terraform tree (default
//! `terraform`) and prints every finding; exits 1 if there is any.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("terraform"));
    let report = clustermesh_terraform_checks::check_tree(&root);
    for finding in &report.findings {
        println!(
            "{}: {}",
            root.join(&finding.file).display(),
            finding.problem
        );
    }
    println!(
        "{} module(s) checked under {}, {} finding(s)",
        report.modules.len(),
        root.display(),
        report.findings.len()
    );
    if report.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

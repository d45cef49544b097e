//! Runs every check over the real `terraform/` tree of this repository.

use std::path::{Path, PathBuf};

use clustermesh_terraform_checks::check_tree;

fn tree() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../terraform")
}

#[test]
fn the_terraform_tree_passes_every_check() {
    let report = check_tree(&tree());
    assert!(
        report.findings.is_empty(),
        "{} finding(s) in terraform/:\n{}",
        report.findings.len(),
        report.render()
    );
}

#[test]
fn every_module_and_example_is_checked() {
    // So that the check above cannot pass by finding nothing to check.
    let report = check_tree(&tree());
    for expected in [
        "modules/clustermesh",
        "modules/connect",
        "modules/eks-cluster",
        "modules/gke-cluster",
        "examples/three-aws-regions",
        "examples/eks-gke-pair",
    ] {
        assert!(
            report.modules.iter().any(|m| m == Path::new(expected)),
            "terraform/{expected} was not checked; checked: {:?}",
            report.modules
        );
    }
}

#[test]
fn every_module_and_example_has_a_readme_and_the_registry_layout() {
    let root = tree();
    for module in check_tree(&root).modules {
        for file in [
            "README.md",
            "main.tf",
            "variables.tf",
            "outputs.tf",
            "versions.tf",
        ] {
            assert!(
                root.join(&module).join(file).is_file(),
                "terraform/{} has no {file}",
                module.display()
            );
        }
    }
}

//! Runs every check over the real `terraform/` tree of this repository.

use std::path::{Path, PathBuf};

use std::collections::BTreeSet;

use clustermesh_terraform_checks::{check_tree, is_example, load_tree, region_cidrs};

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

#[test]
fn every_example_has_cidr_defaults_in_at_least_two_regions() {
    // So that the overlap check has something to compare.
    let (set, _) = load_tree(&tree());
    let examples: Vec<_> = set.modules.values().filter(|m| is_example(m)).collect();
    assert!(
        examples.len() >= 2,
        "no examples found under terraform/examples"
    );
    for example in examples {
        let regions: BTreeSet<String> = region_cidrs(example)
            .into_iter()
            .map(|c| c.region)
            .collect();
        assert!(
            regions.len() >= 2,
            "terraform/{}: expected CIDR defaults in at least two regions, found {regions:?}",
            example.dir.display()
        );
    }
}

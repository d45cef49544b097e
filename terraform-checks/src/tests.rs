//! Deliberately broken snippets: each check must find what it is for, and stay quiet on the
//! correct version of the same snippet.

use super::*;

const VERSIONS: &str = r#"
terraform {
  required_version = ">= 1.5.0"
  required_providers {
    tls = { source = "hashicorp/tls", version = "~> 4.0" }
  }
}
"#;

fn module(dir: &str, files: &[(&str, &str)]) -> Module {
    let (module, findings) = Module::from_sources(dir, files);
    assert!(findings.is_empty(), "snippets must parse: {findings:?}");
    module
}

fn problems(module: &Module, set: &ModuleSet) -> Vec<Problem> {
    check_module(module, set)
        .into_iter()
        .map(|f| f.problem)
        .collect()
}

fn only(module: Module) -> Vec<Problem> {
    let set = ModuleSet::default();
    problems(&module, &set)
}

const CHILD: &str = r#"
variable "name" {
  type        = string
  description = "The cluster's name."
}
variable "id" {
  type        = number
  description = "The cluster's ID."
  default     = 1
}
output "endpoint" {
  description = "Where etcd listens."
  value       = "https://${var.name}:2379"
}
"#;

fn set_with_child() -> ModuleSet {
    let mut set = ModuleSet::default();
    set.insert(module(
        "modules/child",
        &[("main.tf", CHILD), ("versions.tf", VERSIONS)],
    ));
    set
}

fn root(main: &str) -> Module {
    module(
        "examples/one",
        &[("main.tf", main), ("versions.tf", VERSIONS)],
    )
}

#[test]
fn a_correct_module_call_has_no_findings() {
    let set = set_with_child();
    let root = root(
        r#"
module "a" {
  source = "../../modules/child"
  name   = "east"
}
output "endpoint" {
  description = "x"
  value       = module.a.endpoint
}
"#,
    );
    assert_eq!(problems(&root, &set), vec![]);
    assert_eq!(
        problems(&set.modules[Path::new("modules/child")], &set),
        vec![]
    );
}

#[test]
fn an_undeclared_argument_and_a_missing_required_one_are_found() {
    let set = set_with_child();
    let root = root(
        r#"
module "a" {
  source    = "../../modules/child"
  count     = 1
  cluster_x = "east"
}
"#,
    );
    let findings = check_module(&root, &set);
    let problems: Vec<_> = findings.iter().map(|f| f.problem.clone()).collect();
    assert!(problems.contains(&Problem::UndeclaredModuleArgument {
        call: "a".into(),
        argument: "cluster_x".into(),
        module: "modules/child".into(),
    }));
    assert!(problems.contains(&Problem::MissingModuleArgument {
        call: "a".into(),
        variable: "name".into(),
        module: "modules/child".into(),
    }));
    // Meta-arguments are not variables.
    assert!(!problems.iter().any(|p| p.to_string().contains("`count`")));
    // The message names the file.
    assert!(
        findings[0]
            .to_string()
            .starts_with("examples/one/main.tf: module \"a\"")
    );
}

#[test]
fn module_sources_must_be_local_and_exist() {
    let set = set_with_child();
    let root = root(
        r#"
module "remote" {
  source = "terraform-aws-modules/vpc/aws"
}
module "gone" {
  source = "../../modules/gone"
}
"#,
    );
    let problems = problems(&root, &set);
    assert!(
        matches!(&problems[..], [
        Problem::MissingModuleSource { call: gone, .. },
        Problem::RemoteModuleSource { call: remote, .. },
    ] if gone == "gone" && remote == "remote"),
        "{problems:?}"
    );
}

#[test]
fn a_missing_module_output_is_found() {
    let set = set_with_child();
    let root = root(
        r#"
module "a" {
  source = "../../modules/child"
  name   = "east"
}
output "ca" {
  description = "x"
  value       = module.a.ca_bundle
}
"#,
    );
    assert_eq!(
        problems(&root, &set),
        vec![Problem::UndeclaredModuleOutput {
            call: "a".into(),
            output: "ca_bundle".into(),
            module: "modules/child".into(),
        }]
    );
}

#[test]
fn undeclared_variables_and_undefined_locals_are_found() {
    let problems = only(root(
        r#"
locals {
  prefix = "mesh-${var.nmae}"
}
resource "tls_private_key" "ca" {
  algorithm = local.algorithm
  rsa_bits  = length([for k, v in var.sizes : v if k != local.prefix])
}
"#,
    ));
    assert_eq!(
        problems,
        vec![
            Problem::UndeclaredVariable {
                name: "nmae".into()
            },
            Problem::UndefinedLocal {
                name: "algorithm".into()
            },
            Problem::UndeclaredVariable {
                name: "sizes".into()
            },
        ]
    );
}

#[test]
fn names_bound_by_for_and_dynamic_are_not_references() {
    let problems = only(root(
        r#"
variable "rules" {
  type        = list(object({ port = number }))
  description = "x"
  default     = []
}
resource "tls_cert_request" "r" {
  dynamic "subject" {
    for_each = var.rules
    iterator = rule
    content {
      common_name = "${rule.value.port}"
    }
  }
  dns_names = [for r in var.rules : "%{for p in [r.port]}${p}%{endfor}"]
  lifecycle {
    ignore_changes = [subject]
  }
}
"#,
    ));
    assert_eq!(problems, vec![]);
}

#[test]
fn an_output_must_reference_something_defined() {
    let problems = only(root(
        r#"
output "constant" {
  description = "x"
  value       = "https://example.invalid"
}
output "dangling" {
  description = "x"
  value       = tls_private_key.missing.public_key_pem
}
output "gone" {
  description = "x"
  value       = data.tls_certificate.peer.certificates
}
"#,
    ));
    assert_eq!(
        problems,
        vec![
            Problem::UndefinedReference {
                reference: "tls_private_key.missing".into(),
                kind: "resource",
            },
            Problem::UndefinedReference {
                reference: "data.tls_certificate.peer".into(),
                kind: "data source",
            },
            Problem::OutputReferencesNothing {
                name: "constant".into()
            },
        ]
    );
}

#[test]
fn secret_outputs_must_be_sensitive() {
    let problems = only(root(
        r#"
resource "tls_private_key" "peer" {
  algorithm = "ECDSA"
}
output "peer_key" {
  description = "x"
  value       = { key = tls_private_key.peer.private_key_pem }
}
output "peer_key_ok" {
  description = "x"
  value       = tls_private_key.peer.private_key_pem
  sensitive   = true
}
"#,
    ));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(matches!(&problems[0], Problem::OutputNotSensitive { name, .. } if name == "peer_key"));
}

#[test]
fn variables_need_a_type_a_description_and_self_contained_validation() {
    let problems = only(root(
        r#"
variable "service_type" {
  default = "LoadBalancer"
  validation {
    condition     = contains(["LoadBalancer", "NodePort"], var.service_type) || var.other != ""
    error_message = "x"
  }
}
"#,
    ));
    assert_eq!(
        problems,
        vec![
            Problem::UndeclaredVariable {
                name: "other".into()
            },
            Problem::VariableWithoutType {
                name: "service_type".into()
            },
            Problem::WithoutDescription {
                kind: "variable",
                name: "service_type".into()
            },
            Problem::ValidationReferencesOtherVariable {
                name: "service_type".into(),
                other: "other".into()
            },
        ]
    );
}

#[test]
fn provider_pins_and_required_version_are_checked() {
    let module = module(
        "modules/m",
        &[(
            "versions.tf",
            r#"
terraform {
  required_providers {
    aws        = { source = "hashicorp/aws" }
    kubernetes = { source = "hashicorp/kubernetes", version = ">= 2.0" }
    tls        = { source = "hashicorp/tls", version = "~> 4.0" }
  }
}
resource "google_compute_network" "n" {
  name = "x"
}
"#,
        )],
    );
    let problems = only(module);
    assert_eq!(
        problems,
        vec![
            Problem::ProviderWithoutVersion {
                provider: "aws".into()
            },
            Problem::ProviderVersionNotPessimistic {
                provider: "kubernetes".into(),
                constraint: ">= 2.0".into(),
            },
            Problem::MissingRequiredVersion,
            Problem::ProviderNotRequired {
                kind: "resource",
                type_name: "google_compute_network".into(),
                provider: "google".into(),
            },
        ]
    );
}

#[test]
fn overlapping_cidrs_of_two_regions_are_found_and_nested_ones_of_one_region_are_not() {
    let module = root(
        r#"
variable "clusters" {
  type        = map(object({ region = string, vpc_cidr = string, pods = list(string) }))
  description = "x"
  default = {
    east = { region = "us-east-1", vpc_cidr = "10.10.0.0/16", pods = ["10.10.128.0/17"] }
    west = { region = "us-west-2", vpc_cidr = "10.10.64.0/18", pods = ["10.20.0.0/16"] }
  }
}
"#,
    );
    let findings = check_cidr_overlaps(&module);
    let rendered: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
    assert_eq!(
        rendered,
        vec![
            "examples/one/main.tf: CIDR 10.10.64.0/18 at var.clusters.west.vpc_cidr overlaps 10.10.0.0/16 at var.clusters.east.vpc_cidr, which belongs to another region"
        ]
    );

    let fine = root(
        r#"
variable "clusters" {
  type        = map(object({ region = string, vpc_cidr = string }))
  description = "x"
  default = {
    east = { region = "us-east-1", vpc_cidr = "10.10.0.0/16" }
    west = { region = "us-west-2", vpc_cidr = "10.20.0.0/16" }
  }
}
"#,
    );
    assert!(check_cidr_overlaps(&fine).is_empty());
}

#[test]
fn a_file_that_does_not_parse_is_a_finding() {
    let (_, findings) = Module::from_sources("modules/m", &[("main.tf", "resource \"a\" {")]);
    assert_eq!(findings.len(), 1);
    assert!(matches!(findings[0].problem, Problem::Parse(_)));
    assert_eq!(findings[0].file, Path::new("modules/m/main.tf"));
}

#[test]
fn module_sources_resolve_lexically() {
    assert_eq!(
        normalize(Path::new("examples/pair/../../modules/connect")),
        Path::new("modules/connect")
    );
    assert_eq!(normalize(Path::new("./a/./b")), Path::new("a/b"));
}

#[test]
fn provider_aliases_are_not_resource_references() {
    let module = module(
        "modules/peering",
        &[(
            "main.tf",
            r#"
terraform {
  required_version = ">= 1.5.0"
  required_providers {
    aws = {
      source                = "hashicorp/aws"
      version               = "~> 5.70"
      configuration_aliases = [aws.requester, aws.accepter]
    }
  }
}
data "aws_caller_identity" "accepter" {
  provider = aws.accepter
}
resource "aws_vpc_peering_connection" "this" {
  provider      = aws.requester
  peer_owner_id = data.aws_caller_identity.accepter.account_id
}
"#,
        )],
    );
    assert_eq!(only(module), vec![]);
}

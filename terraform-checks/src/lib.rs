//! Static checks of the Terraform modules under `terraform/`, for CI machines that have neither
//! cloud credentials nor provider plugins (so `terraform validate` cannot run there).
//!
//! Every directory with `.tf` files is a module. Each file is parsed with `hcl-rs`, and a
//! module is checked for what `terraform validate` would reject or what our conventions forbid:
//!
//! - a module call passes only variables the called module declares, and every variable that
//!   has no default; its source is a local path (nothing can be downloaded here);
//! - every `var.x`, `local.x`, `module.x(.output)`, `data.t.n` and resource reference names
//!   something the module defines;
//! - every output has a description and a value that refers to something defined, and is marked
//!   `sensitive` when it passes on a private key, a sensitive variable or a sensitive output;
//! - every variable has a type and a description, and its validation blocks refer to it alone
//!   (Terraform before 1.9 rejects anything else);
//! - a `terraform` block sets `required_version`, every `required_providers` entry has a
//!   pessimistic (`~>`) version constraint, and every provider a resource needs is listed;
//! - in examples ([`check_cidr_overlaps`]), the CIDRs of different regions' defaults do not
//!   overlap.
//!
//! Findings name the file and say what is wrong; [`check_tree`] returns all of them at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use hcl::expr::{Expression, ObjectKey, TemplateExpr, TraversalOperator};
use hcl::template::{Directive, Element, Template};
use hcl::{Block, Body};
use ipnet::IpNet;

/// One problem, in one file (or, for a module-wide problem, in the module's directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub file: PathBuf,
    pub problem: Problem,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.problem)
    }
}

/// What is wrong. The messages say what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("cannot read the file: {0}")]
    Read(String),
    #[error("does not parse as HCL: {0}")]
    Parse(String),

    #[error(
        "module \"{call}\" passes `{argument}`, but {module} declares no variable \"{argument}\"; declare it there or stop passing it"
    )]
    UndeclaredModuleArgument {
        call: String,
        argument: String,
        module: String,
    },
    #[error(
        "module \"{call}\" does not pass `{variable}`, which {module} requires (the variable has no default)"
    )]
    MissingModuleArgument {
        call: String,
        variable: String,
        module: String,
    },
    #[error("module \"{call}\" has no `source`")]
    ModuleWithoutSource { call: String },
    #[error(
        "module \"{call}\": source {module_source:?} is not a local path (./ or ../); use plain resources or a module of this repository, since nothing can be downloaded"
    )]
    RemoteModuleSource { call: String, module_source: String },
    #[error(
        "module \"{call}\": source {module_source:?} is not a directory of this tree with .tf files"
    )]
    MissingModuleSource { call: String, module_source: String },

    #[error("`var.{name}` is used, but this module declares no variable \"{name}\"")]
    UndeclaredVariable { name: String },
    #[error("`local.{name}` is used, but no locals block of this module defines it")]
    UndefinedLocal { name: String },
    #[error("`{reference}` refers to a {kind} that this module does not define")]
    UndefinedReference {
        reference: String,
        kind: &'static str,
    },
    #[error("`module.{call}.{output}`: {module} has no output \"{output}\"")]
    UndeclaredModuleOutput {
        call: String,
        output: String,
        module: String,
    },
    #[error(
        "`{name}` is not a reference Terraform knows (var., local., module., data., a resource, each., count., path., self., terraform.)"
    )]
    UnknownName { name: String },

    #[error("{kind} \"{name}\" is defined twice")]
    Duplicate { kind: &'static str, name: String },
    #[error("variable \"{name}\" has no `type`")]
    VariableWithoutType { name: String },
    #[error("{kind} \"{name}\" has no `description`")]
    WithoutDescription { kind: &'static str, name: String },
    #[error(
        "a validation block of variable \"{name}\" refers to `var.{other}`; a condition may refer only to its own variable"
    )]
    ValidationReferencesOtherVariable { name: String, other: String },

    #[error("output \"{name}\" has no `value`")]
    OutputWithoutValue { name: String },
    #[error(
        "output \"{name}\" refers to nothing this module defines (a resource, data source, module, var or local)"
    )]
    OutputReferencesNothing { name: String },
    #[error("output \"{name}\" passes on {what} but is not marked `sensitive = true`")]
    OutputNotSensitive { name: String, what: String },

    #[error("no `terraform` block of this module sets `required_version`")]
    MissingRequiredVersion,
    #[error("required_providers entry \"{provider}\" has no `version` constraint")]
    ProviderWithoutVersion { provider: String },
    #[error(
        "required_providers entry \"{provider}\": version {constraint:?} is not a pessimistic `~>` constraint"
    )]
    ProviderVersionNotPessimistic {
        provider: String,
        constraint: String,
    },
    #[error(
        "{kind} type \"{type_name}\" needs provider \"{provider}\", which required_providers does not list"
    )]
    ProviderNotRequired {
        kind: &'static str,
        type_name: String,
        provider: String,
    },

    #[error(
        "CIDR {cidr} at {at} overlaps {other_cidr} at {other_at}, which belongs to another region"
    )]
    CidrOverlap {
        cidr: IpNet,
        at: String,
        other_cidr: IpNet,
        other_at: String,
    },
}

/// A parsed `.tf` file.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Where the file is, relative to the tree's root (what findings show).
    pub path: PathBuf,
    pub body: Body,
}

/// One module: the `.tf` files of one directory.
#[derive(Debug, Clone)]
pub struct Module {
    /// The directory, relative to the tree's root.
    pub dir: PathBuf,
    pub files: Vec<SourceFile>,
}

impl Module {
    /// Parses in-memory files (name, text) as the module in `dir`. Files that do not parse are
    /// returned as findings and left out.
    pub fn from_sources(
        dir: impl Into<PathBuf>,
        sources: &[(&str, &str)],
    ) -> (Module, Vec<Finding>) {
        let dir = dir.into();
        let mut findings = Vec::new();
        let mut files = Vec::new();
        for (name, text) in sources {
            let path = dir.join(name);
            match hcl::parse(text) {
                Ok(body) => files.push(SourceFile { path, body }),
                Err(e) => findings.push(Finding {
                    file: path,
                    problem: Problem::Parse(e.to_string()),
                }),
            }
        }
        (Module { dir, files }, findings)
    }

    fn blocks<'a>(
        &'a self,
        identifier: &'a str,
    ) -> impl Iterator<Item = (&'a SourceFile, &'a Block)> + 'a {
        self.files.iter().flat_map(move |file| {
            file.body
                .blocks()
                .filter(move |b| b.identifier() == identifier)
                .map(move |b| (file, b))
        })
    }
}

/// The modules of a tree, by directory relative to its root.
#[derive(Debug, Clone, Default)]
pub struct ModuleSet {
    pub modules: BTreeMap<PathBuf, Module>,
}

impl ModuleSet {
    pub fn insert(&mut self, module: Module) {
        self.modules.insert(module.dir.clone(), module);
    }

    /// The module a call in `caller` with `source` refers to, if it is a local path of this set.
    fn resolve(&self, caller: &Path, source: &str) -> Option<&Module> {
        self.modules.get(&normalize(&caller.join(source)))
    }
}

/// The result of checking a tree.
#[derive(Debug, Default)]
pub struct Report {
    /// Every module checked, relative to the root.
    pub modules: Vec<PathBuf>,
    pub findings: Vec<Finding>,
}

impl Report {
    /// All findings, one per line.
    pub fn render(&self) -> String {
        self.findings
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Loads every module under `root` (skipping `.terraform` and other hidden directories), with
/// paths relative to `root`. Files that cannot be read or parsed are returned as findings.
pub fn load_tree(root: &Path) -> (ModuleSet, Vec<Finding>) {
    let mut findings = Vec::new();
    let mut set = ModuleSet::default();
    let mut dirs = Vec::new();
    collect_module_dirs(root, Path::new(""), &mut dirs, &mut findings);
    for (relative, tf_files) in dirs {
        let mut sources = Vec::new();
        for file in tf_files {
            let path = root.join(&relative).join(&file);
            match std::fs::read_to_string(&path) {
                Ok(text) => sources.push((file, text)),
                Err(e) => findings.push(Finding {
                    file: relative.join(&file),
                    problem: Problem::Read(e.to_string()),
                }),
            }
        }
        let borrowed: Vec<(&str, &str)> = sources
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        let (module, parse_findings) = Module::from_sources(relative, &borrowed);
        findings.extend(parse_findings);
        set.insert(module);
    }
    (set, findings)
}

/// Whether a module is an example (under a directory named `examples`).
pub fn is_example(module: &Module) -> bool {
    module.dir.components().any(|c| c.as_os_str() == "examples")
}

/// Loads and checks every module under `root`; examples are also checked for CIDR overlaps.
/// Paths in findings are relative to `root`.
pub fn check_tree(root: &Path) -> Report {
    let (set, findings) = load_tree(root);
    let mut report = Report {
        modules: Vec::new(),
        findings,
    };
    for module in set.modules.values() {
        report.modules.push(module.dir.clone());
        report.findings.extend(check_module(module, &set));
        if is_example(module) {
            report.findings.extend(check_cidr_overlaps(module));
        }
    }
    report
}

fn collect_module_dirs(
    root: &Path,
    relative: &Path,
    out: &mut Vec<(PathBuf, Vec<String>)>,
    findings: &mut Vec<Finding>,
) {
    let dir = root.join(relative);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) => {
            findings.push(Finding {
                file: relative.to_owned(),
                problem: Problem::Read(e.to_string()),
            });
            return;
        }
    };
    let mut tf_files = Vec::new();
    let mut subdirs = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            subdirs.push(name);
        } else if name.ends_with(".tf") {
            tf_files.push(name);
        }
    }
    tf_files.sort();
    subdirs.sort();
    if !tf_files.is_empty() {
        out.push((relative.to_owned(), tf_files));
    }
    for sub in subdirs {
        collect_module_dirs(root, &relative.join(sub), out, findings);
    }
}

/// Lexically resolves `.` and `..` (module sources are relative paths).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// What a module defines.

const MODULE_META_ARGUMENTS: &[&str] = &[
    "source",
    "version",
    "count",
    "for_each",
    "providers",
    "depends_on",
];

/// Reference roots that need no definition.
const BUILTIN_ROOTS: &[&str] = &["path", "terraform", "count", "each", "self"];

#[derive(Debug)]
struct Variable<'a> {
    file: &'a Path,
    block: &'a Block,
    required: bool,
    sensitive: bool,
}

#[derive(Debug, Default)]
struct Index<'a> {
    variables: BTreeMap<String, Variable<'a>>,
    locals: BTreeSet<String>,
    resources: BTreeSet<(String, String)>,
    data: BTreeSet<(String, String)>,
    modules: BTreeMap<String, (&'a Path, &'a Block)>,
    outputs: BTreeMap<String, (&'a Path, &'a Block)>,
    findings: Vec<Finding>,
}

fn label(block: &Block, n: usize) -> Option<&str> {
    block.labels().get(n).map(|l| l.as_str())
}

fn attribute<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

fn is_true(body: &Body, key: &str) -> bool {
    matches!(attribute(body, key), Some(Expression::Bool(true)))
}

fn index(module: &Module) -> Index<'_> {
    let mut idx = Index::default();
    for file in &module.files {
        let path = file.path.as_path();
        for block in file.body.blocks() {
            // The kind and name of what the block defines, if it was defined before.
            let duplicate: Option<(&'static str, String)> =
                match (block.identifier(), label(block, 0), label(block, 1)) {
                    ("variable", Some(name), _) => {
                        let variable = Variable {
                            file: path,
                            block,
                            required: attribute(block.body(), "default").is_none(),
                            sensitive: is_true(block.body(), "sensitive"),
                        };
                        let before = idx.variables.insert(name.to_owned(), variable);
                        before.map(|_| ("variable", name.to_owned()))
                    }
                    ("locals", _, _) => {
                        for attr in block.body().attributes() {
                            if !idx.locals.insert(attr.key().to_owned()) {
                                idx.findings.push(idx_dup(path, "local", attr.key()));
                            }
                        }
                        None
                    }
                    ("resource", Some(t), Some(n)) => {
                        (!idx.resources.insert((t.to_owned(), n.to_owned())))
                            .then(|| ("resource", format!("{t}.{n}")))
                    }
                    ("data", Some(t), Some(n)) => (!idx.data.insert((t.to_owned(), n.to_owned())))
                        .then(|| ("data source", format!("data.{t}.{n}"))),
                    ("module", Some(name), _) => idx
                        .modules
                        .insert(name.to_owned(), (path, block))
                        .map(|_| ("module", name.to_owned())),
                    ("output", Some(name), _) => idx
                        .outputs
                        .insert(name.to_owned(), (path, block))
                        .map(|_| ("output", name.to_owned())),
                    _ => None,
                };
            if let Some((kind, name)) = duplicate {
                idx.findings.push(idx_dup(path, kind, &name));
            }
        }
    }
    idx
}

fn idx_dup(file: &Path, kind: &'static str, name: &str) -> Finding {
    Finding {
        file: file.to_owned(),
        problem: Problem::Duplicate {
            kind,
            name: name.to_owned(),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// References.

/// A use of a name: its root identifier and the attribute names that directly follow it
/// (`aws_vpc.this[0].id` is root `aws_vpc`, attributes `["this"]`, and `id` after the index is
/// not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reference {
    root: String,
    attrs: Vec<String>,
    /// Every attribute name along the traversal, also after indexes (for the sensitivity check).
    all_attrs: Vec<String>,
}

impl Reference {
    fn render(&self, parts: usize) -> String {
        std::iter::once(self.root.as_str())
            .chain(self.attrs.iter().take(parts).map(String::as_str))
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// Collects references from expressions, keeping track of names bound by `for` expressions,
/// template `for` directives and `dynamic` block iterators.
#[derive(Default)]
struct Collector {
    bound: Vec<String>,
    refs: Vec<Reference>,
}

impl Collector {
    fn expr(&mut self, expr: &Expression) {
        match expr {
            Expression::Null
            | Expression::Bool(_)
            | Expression::Number(_)
            | Expression::String(_) => {}
            Expression::Array(items) => items.iter().for_each(|e| self.expr(e)),
            Expression::Object(object) => {
                for (key, value) in object.iter() {
                    // A bare name as a key is a literal string, not a reference.
                    if let ObjectKey::Expression(key) = key
                        && !matches!(key, Expression::Variable(_))
                    {
                        self.expr(key);
                    }
                    self.expr(value);
                }
            }
            Expression::TemplateExpr(template) => self.template_expr(template),
            Expression::Variable(name) => self.reference(name.as_str(), &[]),
            Expression::Traversal(traversal) => {
                for op in &traversal.operators {
                    if let TraversalOperator::Index(index) = op {
                        self.expr(index);
                    }
                }
                match &traversal.expr {
                    Expression::Variable(name) => {
                        self.reference(name.as_str(), &traversal.operators)
                    }
                    other => self.expr(other),
                }
            }
            Expression::FuncCall(call) => call.args.iter().for_each(|e| self.expr(e)),
            Expression::Parenthesis(inner) => self.expr(inner),
            Expression::Conditional(c) => {
                self.expr(&c.cond_expr);
                self.expr(&c.true_expr);
                self.expr(&c.false_expr);
            }
            Expression::Operation(op) => match op.as_ref() {
                hcl::expr::Operation::Unary(u) => self.expr(&u.expr),
                hcl::expr::Operation::Binary(b) => {
                    self.expr(&b.lhs_expr);
                    self.expr(&b.rhs_expr);
                }
            },
            Expression::ForExpr(f) => {
                self.expr(&f.collection_expr);
                let depth = self.bound.len();
                self.bound.extend(f.key_var.iter().map(|k| k.to_string()));
                self.bound.push(f.value_var.to_string());
                if let Some(k) = &f.key_expr {
                    self.expr(k);
                }
                self.expr(&f.value_expr);
                if let Some(c) = &f.cond_expr {
                    self.expr(c);
                }
                self.bound.truncate(depth);
            }
            // Expression kinds that later versions of hcl-rs may add hold no references we know.
            _ => {}
        }
    }

    fn template_expr(&mut self, template: &TemplateExpr) {
        // A template that does not parse is left to Terraform; hcl::parse has accepted it.
        if let Ok(template) = Template::from_expr(template) {
            self.template(&template);
        }
    }

    fn template(&mut self, template: &Template) {
        for element in template.elements() {
            match element {
                Element::Literal(_) => {}
                Element::Interpolation(i) => self.expr(&i.expr),
                Element::Directive(d) => match d.as_ref() {
                    Directive::If(d) => {
                        self.expr(&d.cond_expr);
                        self.template(&d.true_template);
                        if let Some(f) = &d.false_template {
                            self.template(f);
                        }
                    }
                    Directive::For(d) => {
                        self.expr(&d.collection_expr);
                        let depth = self.bound.len();
                        self.bound.extend(d.key_var.iter().map(|k| k.to_string()));
                        self.bound.push(d.value_var.to_string());
                        self.template(&d.template);
                        self.bound.truncate(depth);
                    }
                },
            }
        }
    }

    fn reference(&mut self, root: &str, operators: &[TraversalOperator]) {
        if self.bound.iter().any(|b| b == root) {
            return;
        }
        let attrs = operators
            .iter()
            .map_while(|op| match op {
                TraversalOperator::GetAttr(name) => Some(name.to_string()),
                _ => None,
            })
            .collect();
        let all_attrs = operators
            .iter()
            .filter_map(|op| match op {
                TraversalOperator::GetAttr(name) => Some(name.to_string()),
                _ => None,
            })
            .collect();
        self.refs.push(Reference {
            root: root.to_owned(),
            attrs,
            all_attrs,
        });
    }

    /// The references of a block's body, skipping what is not an expression over the
    /// module's objects: `type` constraints, `ignore_changes` lists, provider selections.
    fn body(&mut self, body: &Body, parent: &str) {
        for attr in body.attributes() {
            let skip = matches!(
                (parent, attr.key()),
                ("variable", "type")
                    | ("lifecycle", "ignore_changes")
                    | ("module", "providers")
                    | (_, "provider")
            );
            if !skip {
                self.expr(attr.expr());
            }
        }
        for block in body.blocks() {
            match block.identifier() {
                identifier if holds_no_references(identifier) => {}
                "dynamic" => {
                    let iterator = match attribute(block.body(), "iterator") {
                        Some(Expression::Variable(v)) => v.to_string(),
                        _ => label(block, 0).unwrap_or_default().to_owned(),
                    };
                    for attr in block.body().attributes() {
                        if attr.key() != "iterator" {
                            self.expr(attr.expr());
                        }
                    }
                    self.bound.push(iterator);
                    for inner in block.body().blocks() {
                        self.body(inner.body(), inner.identifier());
                    }
                    self.bound.pop();
                }
                other => self.body(block.body(), other),
            }
        }
    }
}

/// Blocks whose names are not references to the module's objects: provider requirements and
/// configuration aliases (`aws.west`), and the address-only blocks.
fn holds_no_references(identifier: &str) -> bool {
    matches!(identifier, "terraform" | "moved" | "import" | "removed")
}

fn references_of_body(body: &Body, identifier: &str) -> Vec<Reference> {
    let mut c = Collector::default();
    if !holds_no_references(identifier) {
        c.body(body, identifier);
    }
    c.refs
}

fn references_of_expr(expr: &Expression) -> Vec<Reference> {
    let mut c = Collector::default();
    c.expr(expr);
    c.refs
}

/// What a reference points at, if it is one of the module's own objects.
fn check_reference(
    reference: &Reference,
    module: &Module,
    idx: &Index<'_>,
    set: &ModuleSet,
) -> Option<Problem> {
    let first = reference.attrs.first();
    match reference.root.as_str() {
        "var" => {
            let name = first?;
            (!idx.variables.contains_key(name))
                .then(|| Problem::UndeclaredVariable { name: name.clone() })
        }
        "local" => {
            let name = first?;
            (!idx.locals.contains(name)).then(|| Problem::UndefinedLocal { name: name.clone() })
        }
        "module" => {
            let name = first?;
            let Some((_, block)) = idx.modules.get(name) else {
                return Some(Problem::UndefinedReference {
                    reference: reference.render(1),
                    kind: "module",
                });
            };
            let output = reference.attrs.get(1)?;
            let source = module_source(block)?;
            let child = set.resolve(&module.dir, source)?;
            let has_output = child
                .blocks("output")
                .any(|(_, b)| label(b, 0) == Some(output));
            (!has_output).then(|| Problem::UndeclaredModuleOutput {
                call: name.clone(),
                output: output.clone(),
                module: child.dir.display().to_string(),
            })
        }
        "data" => {
            let (t, n) = (reference.attrs.first()?, reference.attrs.get(1)?);
            (!idx.data.contains(&(t.clone(), n.clone()))).then(|| Problem::UndefinedReference {
                reference: reference.render(2),
                kind: "data source",
            })
        }
        root if BUILTIN_ROOTS.contains(&root) => None,
        root => match first {
            None => Some(Problem::UnknownName {
                name: root.to_owned(),
            }),
            Some(name) => (!idx.resources.contains(&(root.to_owned(), name.clone()))).then(|| {
                Problem::UndefinedReference {
                    reference: reference.render(1),
                    kind: "resource",
                }
            }),
        },
    }
}

fn module_source(block: &Block) -> Option<&str> {
    match attribute(block.body(), "source") {
        Some(Expression::String(s)) => Some(s.as_str()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The checks.

/// Checks one module; `set` holds the modules that its module calls may refer to.
pub fn check_module(module: &Module, set: &ModuleSet) -> Vec<Finding> {
    let idx = index(module);
    let mut findings = idx.findings.clone();
    let mut push = |file: &Path, problem: Problem| {
        findings.push(Finding {
            file: file.to_owned(),
            problem,
        })
    };

    // References anywhere in the module.
    for file in &module.files {
        for block in file.body.blocks() {
            let mut seen = BTreeSet::new();
            for reference in references_of_body(block.body(), block.identifier()) {
                if let Some(problem) = check_reference(&reference, module, &idx, set)
                    && seen.insert(problem.to_string())
                {
                    push(&file.path, problem);
                }
            }
        }
        // Attributes at the top level of a file are not Terraform, but are checked alike.
        for attr in file.body.attributes() {
            for reference in references_of_expr(attr.expr()) {
                if let Some(problem) = check_reference(&reference, module, &idx, set) {
                    push(&file.path, problem);
                }
            }
        }
    }

    // Variables.
    for (name, variable) in &idx.variables {
        let body = variable.block.body();
        if attribute(body, "type").is_none() {
            push(
                variable.file,
                Problem::VariableWithoutType { name: name.clone() },
            );
        }
        if attribute(body, "description").is_none() {
            push(
                variable.file,
                Problem::WithoutDescription {
                    kind: "variable",
                    name: name.clone(),
                },
            );
        }
        for validation in body.blocks().filter(|b| b.identifier() == "validation") {
            let others: BTreeSet<String> = references_of_body(validation.body(), "validation")
                .into_iter()
                .filter(|r| r.root == "var")
                .filter_map(|r| r.attrs.first().cloned())
                .filter(|other| other != name)
                .collect();
            for other in others {
                push(
                    variable.file,
                    Problem::ValidationReferencesOtherVariable {
                        name: name.clone(),
                        other,
                    },
                );
            }
        }
    }

    // Module calls.
    for (call, (file, block)) in &idx.modules {
        let Some(source) = module_source(block) else {
            push(file, Problem::ModuleWithoutSource { call: call.clone() });
            continue;
        };
        if !(source.starts_with("./") || source.starts_with("../")) {
            push(
                file,
                Problem::RemoteModuleSource {
                    call: call.clone(),
                    module_source: source.to_owned(),
                },
            );
            continue;
        }
        let Some(child) = set.resolve(&module.dir, source) else {
            push(
                file,
                Problem::MissingModuleSource {
                    call: call.clone(),
                    module_source: source.to_owned(),
                },
            );
            continue;
        };
        let child_idx = index(child);
        let passed: BTreeSet<&str> = block
            .body()
            .attributes()
            .map(|a| a.key())
            .filter(|k| !MODULE_META_ARGUMENTS.contains(k))
            .collect();
        for argument in &passed {
            if !child_idx.variables.contains_key(*argument) {
                push(
                    file,
                    Problem::UndeclaredModuleArgument {
                        call: call.clone(),
                        argument: (*argument).to_owned(),
                        module: child.dir.display().to_string(),
                    },
                );
            }
        }
        for (variable, declared) in &child_idx.variables {
            if declared.required && !passed.contains(variable.as_str()) {
                push(
                    file,
                    Problem::MissingModuleArgument {
                        call: call.clone(),
                        variable: variable.clone(),
                        module: child.dir.display().to_string(),
                    },
                );
            }
        }
    }

    // Outputs.
    for (name, (file, block)) in &idx.outputs {
        let body = block.body();
        if attribute(body, "description").is_none() {
            push(
                file,
                Problem::WithoutDescription {
                    kind: "output",
                    name: name.clone(),
                },
            );
        }
        let Some(value) = attribute(body, "value") else {
            push(file, Problem::OutputWithoutValue { name: name.clone() });
            continue;
        };
        let refs = references_of_expr(value);
        let defined = refs
            .iter()
            .any(|r| !BUILTIN_ROOTS.contains(&r.root.as_str()));
        let all_resolve = refs
            .iter()
            .all(|r| check_reference(r, module, &idx, set).is_none());
        if !defined && all_resolve {
            push(
                file,
                Problem::OutputReferencesNothing { name: name.clone() },
            );
        }
        if !is_true(body, "sensitive")
            && let Some(what) = refs.iter().find_map(|r| secret_in(r, module, &idx, set))
        {
            push(
                file,
                Problem::OutputNotSensitive {
                    name: name.clone(),
                    what,
                },
            );
        }
    }

    // Provider requirements.
    findings.extend(check_versions(module));
    findings
}

/// Why a reference carries a secret, if it does.
fn secret_in(
    reference: &Reference,
    module: &Module,
    idx: &Index<'_>,
    set: &ModuleSet,
) -> Option<String> {
    if let Some(attr) = reference.all_attrs.iter().find(|a| {
        a.contains("private_key")
            || (a.ends_with("key_pem") && !a.contains("public"))
            || a.as_str() == "password"
    }) {
        return Some(format!("`{attr}` of {}", reference.render(1)));
    }
    match reference.root.as_str() {
        "var" => {
            let name = reference.attrs.first()?;
            idx.variables
                .get(name)
                .filter(|v| v.sensitive)
                .map(|_| format!("the sensitive variable `var.{name}`"))
        }
        "module" => {
            let (call, output) = (reference.attrs.first()?, reference.attrs.get(1)?);
            let (_, block) = idx.modules.get(call)?;
            let child = set.resolve(&module.dir, module_source(block)?)?;
            let (_, out) = child
                .blocks("output")
                .find(|(_, b)| label(b, 0) == Some(output))?;
            is_true(out.body(), "sensitive")
                .then(|| format!("the sensitive output `module.{call}.{output}`"))
        }
        _ => None,
    }
}

/// `required_version` is set, every provider is pinned with `~>`, and every provider that a
/// resource or data source needs is listed.
pub fn check_versions(module: &Module) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut has_required_version = false;
    let mut listed = BTreeSet::new();
    for (file, block) in module.blocks("terraform") {
        if attribute(block.body(), "required_version").is_some() {
            has_required_version = true;
        }
        for providers in block
            .body()
            .blocks()
            .filter(|b| b.identifier() == "required_providers")
        {
            for entry in providers.body().attributes() {
                let provider = entry.key().to_owned();
                listed.insert(provider.clone());
                let version = match entry.expr() {
                    Expression::Object(object) => object.iter().find_map(|(k, v)| {
                        let key = match k {
                            ObjectKey::Identifier(i) => i.to_string(),
                            ObjectKey::Expression(Expression::Variable(v)) => v.to_string(),
                            ObjectKey::Expression(Expression::String(s)) => s.clone(),
                            _ => return None,
                        };
                        (key == "version").then_some(v)
                    }),
                    // The legacy form: `aws = "~> 5.0"`.
                    other => Some(other),
                };
                let problem = match version {
                    Some(Expression::String(c)) if c.trim().is_empty() => {
                        Some(Problem::ProviderWithoutVersion { provider })
                    }
                    Some(Expression::String(c)) if !c.contains("~>") => {
                        Some(Problem::ProviderVersionNotPessimistic {
                            provider,
                            constraint: c.clone(),
                        })
                    }
                    Some(Expression::String(_)) => None,
                    _ => Some(Problem::ProviderWithoutVersion { provider }),
                };
                if let Some(problem) = problem {
                    findings.push(Finding {
                        file: file.path.clone(),
                        problem,
                    });
                }
            }
        }
    }
    if !has_required_version {
        findings.push(Finding {
            file: module.dir.clone(),
            problem: Problem::MissingRequiredVersion,
        });
    }
    for (kind, identifier) in [("resource", "resource"), ("data source", "data")] {
        for (file, block) in module.blocks(identifier) {
            let Some(type_name) = label(block, 0) else {
                continue;
            };
            let provider = match attribute(block.body(), "provider") {
                Some(Expression::Variable(v)) => v.to_string(),
                Some(Expression::Traversal(t)) => match &t.expr {
                    Expression::Variable(v) => v.to_string(),
                    _ => continue,
                },
                _ => type_name.split('_').next().unwrap_or(type_name).to_owned(),
            };
            if provider != "terraform" && !listed.contains(&provider) {
                findings.push(Finding {
                    file: file.path.clone(),
                    problem: Problem::ProviderNotRequired {
                        kind,
                        type_name: type_name.to_owned(),
                        provider,
                    },
                });
            }
        }
    }
    findings
}

/// A CIDR found in a variable default, with where it was found and which region it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionCidr {
    pub cidr: IpNet,
    /// Where in the default it is, such as `var.clusters[1].vpc_cidr`.
    pub at: String,
    /// The region object it is in (its path), or the variable when it is in none.
    pub region: String,
    pub file: PathBuf,
}

/// Every CIDR in the module's variable defaults, with the region it belongs to (see
/// [`check_cidr_overlaps`]).
pub fn region_cidrs(module: &Module) -> Vec<RegionCidr> {
    let mut found = Vec::new();
    for (file, block) in module.blocks("variable") {
        let Some(name) = label(block, 0) else {
            continue;
        };
        if let Some(default) = attribute(block.body(), "default") {
            let at = format!("var.{name}");
            collect_cidrs(default, &at, &at, &file.path, &mut found);
        }
    }
    found
}

/// In an example, the CIDRs in variable defaults must not overlap across regions. A region is
/// an object in a default that has a `region` attribute (for example one element of a
/// `clusters` map); CIDRs outside such an object belong to their variable. CIDRs of one region
/// may nest (a VPC and its subnets).
pub fn check_cidr_overlaps(module: &Module) -> Vec<Finding> {
    let found = region_cidrs(module);
    let mut findings = Vec::new();
    for (i, a) in found.iter().enumerate() {
        for b in &found[i + 1..] {
            if a.region != b.region
                && (a.cidr.contains(&b.cidr.network()) || b.cidr.contains(&a.cidr.network()))
            {
                findings.push(Finding {
                    file: b.file.clone(),
                    problem: Problem::CidrOverlap {
                        cidr: b.cidr,
                        at: b.at.clone(),
                        other_cidr: a.cidr,
                        other_at: a.at.clone(),
                    },
                });
            }
        }
    }
    findings
}

fn collect_cidrs(
    expr: &Expression,
    at: &str,
    region: &str,
    file: &Path,
    out: &mut Vec<RegionCidr>,
) {
    match expr {
        Expression::String(s) => {
            if s.contains('/')
                && let Ok(cidr) = s.parse::<IpNet>()
            {
                out.push(RegionCidr {
                    cidr,
                    at: at.to_owned(),
                    region: region.to_owned(),
                    file: file.to_owned(),
                });
            }
        }
        Expression::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_cidrs(item, &format!("{at}[{i}]"), region, file, out);
            }
        }
        Expression::Object(object) => {
            let is_region = object
                .iter()
                .any(|(k, _)| object_key(k).as_deref() == Some("region"));
            let region = if is_region { at } else { region };
            for (key, value) in object.iter() {
                let Some(key) = object_key(key) else { continue };
                let at = if key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    format!("{at}.{key}")
                } else {
                    format!("{at}[{key:?}]")
                };
                collect_cidrs(value, &at, region, file, out);
            }
        }
        Expression::Parenthesis(inner) => collect_cidrs(inner, at, region, file, out),
        _ => {}
    }
}

fn object_key(key: &ObjectKey) -> Option<String> {
    match key {
        ObjectKey::Identifier(i) => Some(i.to_string()),
        ObjectKey::Expression(Expression::Variable(v)) => Some(v.to_string()),
        ObjectKey::Expression(Expression::String(s)) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests;

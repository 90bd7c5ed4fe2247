//! The modules of `src/` form no import cycle: arrows between them point one way.
//!
//! The check reads the library's sources as the compiler finds them (from `src/lib.rs`, following
//! `mod` declarations: `src/a.rs` or `src/a/mod.rs` is `a`, `src/a/b.rs` is `a::b`; `main.rs` is
//! the binary's glue and is left out; inline `mod x { … }` blocks belong to their file's module;
//! `#[cfg(test)]` code is left out, since tests may use anything). It collects the edges
//! module → module made by `use` trees and by `crate::`, `super::` and `self::` paths in code,
//! types and macro arguments (not by visibilities such as `pub(super)`, which only say where a
//! name may be used). An edge points at the deepest module the path names, and through a
//! re-export to the module that defines the name. A module's edges to its own descendants are
//! containment, not imports: declaring a child, or re-exporting a child's names from a folder's
//! `mod.rs`, is no edge; only a name of the child used in the parent's own code is one.
//! Modules that reach each other (a strongly connected component of two or more) fail the test,
//! which prints every edge inside them with its file, line and path, so the import to move is
//! plain.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use proc_macro2::{Spacing, TokenStream, TokenTree};
use syn::ext::IdentExt;
use syn::visit::{self, Visit};
use syn::{Attribute, Ident, ImplItem, Item, ItemMod, Meta, UseTree};

/// A module below the crate root, segment by segment (`[]` is the root, `src/lib.rs`).
type ModPath = Vec<String>;

/// What one module scope (a file, or an inline `mod` block in it) declares.
#[derive(Default)]
struct Scope {
    /// Items defined here: types, functions, constants, statics, traits, macros.
    defs: BTreeSet<String>,
    /// Modules declared here, in their own file or inline.
    children: BTreeSet<String>,
    /// Every `use` leaf, including those inside function bodies.
    uses: Vec<UseLeaf>,
}

/// One leaf of a `use` tree: `use a::{b::{self, C as D}, e::*}` has three.
struct UseLeaf {
    /// The name it brings into scope; `None` for a glob.
    name: Option<String>,
    /// The path as written, without the renaming (`["a", "b", "C"]`; a glob's module).
    target: Vec<String>,
    file: usize,
    line: usize,
    text: String,
}

/// A path in code (expression, type, pattern, attribute, macro argument).
struct CodePath {
    /// The scope it is written in.
    scope: ModPath,
    segs: Vec<String>,
    file: usize,
    line: usize,
}

/// Where one edge is made: (file, line) → the paths on that line that make it.
type Sites = BTreeMap<(String, usize), BTreeSet<String>>;

/// The library's module graph.
struct Graph {
    /// Every file module, by name (`crate` for the root).
    modules: Vec<String>,
    /// (from, to) → where it is made.
    edges: BTreeMap<(String, String), Sites>,
}

/// The sources of one crate, parsed.
struct Crate {
    /// The crate's folder (the one holding `src/`).
    root: PathBuf,
    /// The file modules and their files.
    files: Vec<(ModPath, PathBuf)>,
    scopes: BTreeMap<ModPath, Scope>,
    paths: Vec<CodePath>,
}

/// Reads the library of the crate in `root` and builds its module graph.
fn analyse(root: &Path) -> Result<Graph, String> {
    let krate = Crate::load(root)?;
    Ok(krate.graph())
}

fn module_name(path: &[String]) -> String {
    if path.is_empty() {
        "crate".to_owned()
    } else {
        path.join("::")
    }
}

fn ident(id: &Ident) -> String {
    id.unraw().to_string()
}

fn line_of(id: &Ident) -> usize {
    id.span().start().line
}

fn is_test(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && matches!(&a.meta, Meta::List(list) if list.tokens.to_string() == "test")
    })
}

fn item_attrs(item: &Item) -> &[Attribute] {
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// The name an item defines in its module's namespace (modules and `use` aside).
fn item_name(item: &Item) -> Option<&Ident> {
    match item {
        Item::Const(i) => Some(&i.ident),
        Item::Enum(i) => Some(&i.ident),
        Item::ExternCrate(i) => Some(i.rename.as_ref().map_or(&i.ident, |(_, r)| r)),
        Item::Fn(i) => Some(&i.sig.ident),
        Item::Macro(i) => i.ident.as_ref(),
        Item::Static(i) => Some(&i.ident),
        Item::Struct(i) => Some(&i.ident),
        Item::Trait(i) => Some(&i.ident),
        Item::TraitAlias(i) => Some(&i.ident),
        Item::Type(i) => Some(&i.ident),
        Item::Union(i) => Some(&i.ident),
        _ => None,
    }
}

impl Crate {
    fn load(root: &Path) -> Result<Crate, String> {
        let mut krate = Crate {
            root: root.to_owned(),
            files: Vec::new(),
            scopes: BTreeMap::new(),
            paths: Vec::new(),
        };
        let mut queue = vec![(ModPath::new(), root.join("src/lib.rs"))];
        let mut errors = Vec::new();
        while let Some((module, file)) = queue.pop() {
            let shown = krate.show(&file);
            let text = std::fs::read_to_string(&file).map_err(|e| format!("{shown}: {e}"))?;
            let ast = syn::parse_file(&text).map_err(|e| {
                let at = e.span().start();
                format!("{shown}:{}:{}: {e}", at.line, at.column + 1)
            })?;
            // Where the files of this module's children are.
            let dir = if module.is_empty() || file.ends_with("mod.rs") {
                file.parent()
                    .expect("a source file is in a folder")
                    .to_owned()
            } else {
                file.with_extension("")
            };
            let index = krate.files.len();
            krate.files.push((module.clone(), file));
            let mut collector = Collector {
                scopes: &mut krate.scopes,
                paths: &mut krate.paths,
                file: index,
                shown,
                scope: module,
                dir,
                found: Vec::new(),
                errors: Vec::new(),
            };
            collector.define(&ast.items);
            for item in &ast.items {
                collector.visit_item(item);
            }
            queue.extend(collector.found);
            errors.extend(collector.errors);
        }
        if errors.is_empty() {
            Ok(krate)
        } else {
            Err(errors.join("\n"))
        }
    }

    /// A file as the report shows it: relative to the crate's folder.
    fn show(&self, file: &Path) -> String {
        file.strip_prefix(&self.root)
            .unwrap_or(file)
            .display()
            .to_string()
    }

    /// The file module a scope belongs to (an inline module belongs to its file's).
    fn file_module(&self, scope: &[String]) -> ModPath {
        (0..=scope.len())
            .rev()
            .map(|n| &scope[..n])
            .find(|prefix| self.files.iter().any(|(m, _)| m == prefix))
            .unwrap_or(&[])
            .to_vec()
    }

    fn leaf_named<'a>(&'a self, scope: &[String], name: &str) -> Option<&'a UseLeaf> {
        self.scopes
            .get(scope)?
            .uses
            .iter()
            .find(|u| u.name.as_deref() == Some(name))
    }

    /// `segs`, written in `scope`, as a path from the crate root; `None` when it leads out of
    /// the crate (`std::…`, a dependency) or to a local name.
    fn absolute(&self, scope: &[String], segs: &[String], depth: usize) -> Option<ModPath> {
        let first = segs.first()?;
        match first.as_str() {
            "crate" => Some(segs[1..].to_vec()),
            "self" | "super" => {
                let mut base = scope.to_vec();
                let mut i = usize::from(first == "self");
                while segs.get(i).map(String::as_str) == Some("super") {
                    base.pop()?;
                    i += 1;
                }
                base.extend_from_slice(&segs[i..]);
                Some(base)
            }
            _ => {
                let here = self.scopes.get(scope)?;
                if here.children.contains(first) || here.defs.contains(first) {
                    let mut path = scope.to_vec();
                    path.extend_from_slice(segs);
                    return Some(path);
                }
                if depth > 8 {
                    return None;
                }
                let leaf = self.leaf_named(scope, first)?;
                let mut path = self.absolute(scope, &leaf.target, depth + 1)?;
                path.extend_from_slice(&segs[1..]);
                Some(path)
            }
        }
    }

    /// The scope that defines what the absolute path `abs` names: its deepest module, or,
    /// when the path goes on into an imported name, the module that name comes from.
    fn resolve(&self, abs: &[String], depth: usize) -> ModPath {
        let mut cur = ModPath::new();
        for (i, seg) in abs.iter().enumerate() {
            let Some(scope) = self.scopes.get(&cur) else {
                break;
            };
            if scope.children.contains(seg) {
                cur.push(seg.clone());
                continue;
            }
            if scope.defs.contains(seg) || depth > 8 {
                break;
            }
            let rest = &abs[i + 1..];
            let follow = |base: ModPath| {
                let mut target = base;
                target.extend_from_slice(rest);
                self.resolve(&target, depth + 1)
            };
            if let Some(leaf) = self.leaf_named(&cur, seg) {
                match self.absolute(&cur, &leaf.target, 0) {
                    Some(target) => return follow(target),
                    None => break,
                }
            }
            for glob in scope.uses.iter().filter(|u| u.name.is_none()) {
                let Some(base) = self.absolute(&cur, &glob.target, 0) else {
                    continue;
                };
                let names_it = self.scopes.get(&base).is_some_and(|s| {
                    s.defs.contains(seg)
                        || s.children.contains(seg)
                        || s.uses.iter().any(|u| u.name.as_ref() == Some(seg))
                });
                if names_it {
                    let mut target = base;
                    target.push(seg.clone());
                    return follow(target);
                }
            }
            break;
        }
        cur
    }

    /// The file module that `segs`, written in `scope`, depends on, if it is in this crate.
    fn target(&self, scope: &[String], segs: &[String]) -> Option<ModPath> {
        let abs = self.absolute(scope, segs, 0)?;
        Some(self.file_module(&self.resolve(&abs, 0)))
    }

    fn graph(&self) -> Graph {
        let mut graph = Graph {
            modules: self.files.iter().map(|(m, _)| module_name(m)).collect(),
            edges: BTreeMap::new(),
        };
        graph.modules.sort();
        let mut add = |from: &[String], to: &[String], file: usize, line: usize, text: String| {
            graph
                .edges
                .entry((module_name(from), module_name(to)))
                .or_default()
                .entry((self.show(&self.files[file].1), line))
                .or_default()
                .insert(text);
        };
        let within = |to: &[String], from: &[String]| to.starts_with(from);

        for (scope, declared) in &self.scopes {
            let from = self.file_module(scope);
            for leaf in &declared.uses {
                let Some(to) = self.target(scope, &leaf.target) else {
                    continue;
                };
                // An import of the module itself or of its descendants (a folder's `mod.rs`
                // re-exporting its parts) is containment; the names' use in code decides.
                if !within(&to, &from) {
                    add(&from, &to, leaf.file, leaf.line, leaf.text.clone());
                }
            }
        }

        for path in &self.paths {
            let from = self.file_module(&path.scope);
            let first = path.segs[0].as_str();
            let declared = &self.scopes[&path.scope];
            let to = match first {
                "crate" | "super" | "self" => self.target(&path.scope, &path.segs),
                _ if declared.children.contains(first) && path.segs.len() > 1 => {
                    self.target(&path.scope, &path.segs)
                }
                _ => match self.leaf_named(&path.scope, first) {
                    Some(leaf) => {
                        let to = self.target(&path.scope, &path.segs);
                        // The `use` line already stands for an edge out of this module.
                        let imported = self.target(&path.scope, &leaf.target);
                        if to == imported && to.as_ref().is_some_and(|t| !within(t, &from)) {
                            continue;
                        }
                        to
                    }
                    // A name a glob brought in: the glob's line stands for an edge out of this
                    // module; a descendant's name counts where it is used.
                    None if declared.uses.iter().any(|u| u.name.is_none()) => {
                        let mut abs = path.scope.clone();
                        abs.extend_from_slice(&path.segs);
                        let to = self.file_module(&self.resolve(&abs, 0));
                        if !within(&to, &from) {
                            continue;
                        }
                        Some(to)
                    }
                    None => continue,
                },
            };
            let Some(to) = to else {
                continue;
            };
            if to == from {
                continue;
            }
            add(&from, &to, path.file, path.line, path.segs.join("::"));
        }
        graph
    }
}

/// Walks one file, filling in its scopes and recording its paths.
struct Collector<'a> {
    scopes: &'a mut BTreeMap<ModPath, Scope>,
    paths: &'a mut Vec<CodePath>,
    file: usize,
    shown: String,
    scope: ModPath,
    /// The folder holding the files of the current scope's child modules.
    dir: PathBuf,
    /// Child modules in files of their own: (module, file).
    found: Vec<(ModPath, PathBuf)>,
    errors: Vec<String>,
}

impl Collector<'_> {
    /// Records the names the items of the current scope define.
    fn define(&mut self, items: &[Item]) {
        let scope = self.scopes.entry(self.scope.clone()).or_default();
        for item in items.iter().filter(|i| !is_test(item_attrs(i))) {
            if let Item::Mod(m) = item {
                scope.children.insert(ident(&m.ident));
            } else if let Some(name) = item_name(item) {
                scope.defs.insert(ident(name));
            }
        }
    }

    fn module(&mut self, m: &ItemMod) {
        let name = ident(&m.ident);
        let mut path = self.scope.clone();
        path.push(name.clone());
        match &m.content {
            Some((_, items)) => {
                let outer_dir = self.dir.clone();
                self.dir.push(&name);
                let outer = std::mem::replace(&mut self.scope, path);
                self.define(items);
                for item in items {
                    self.visit_item(item);
                }
                self.scope = outer;
                self.dir = outer_dir;
            }
            None => {
                let line = line_of(&m.ident);
                if m.attrs.iter().any(|a| a.path().is_ident("path")) {
                    self.errors.push(format!(
                        "{}:{line}: `#[path]` on `mod {name}`: this check finds module files by \
                         their names only",
                        self.shown
                    ));
                    return;
                }
                let flat = self.dir.join(format!("{name}.rs"));
                let folder = self.dir.join(&name).join("mod.rs");
                if flat.is_file() {
                    self.found.push((path, flat));
                } else if folder.is_file() {
                    self.found.push((path, folder));
                } else {
                    self.errors.push(format!(
                        "{}:{line}: no file for `mod {name}` ({} or {})",
                        self.shown,
                        flat.display(),
                        folder.display()
                    ));
                }
            }
        }
    }

    fn use_tree(&mut self, tree: &UseTree, prefix: &mut Vec<String>) {
        match tree {
            UseTree::Path(p) => {
                prefix.push(ident(&p.ident));
                self.use_tree(&p.tree, prefix);
                prefix.pop();
            }
            UseTree::Name(n) => {
                let name = ident(&n.ident);
                let target = import_target(prefix, &name);
                let bound = target.last().cloned();
                self.leaf(bound, target, line_of(&n.ident), String::new());
            }
            UseTree::Rename(r) => {
                let name = ident(&r.ident);
                let target = import_target(prefix, &name);
                let suffix = format!(" as {}", ident(&r.rename));
                self.leaf(Some(ident(&r.rename)), target, line_of(&r.ident), suffix);
            }
            UseTree::Glob(g) => {
                let line = g.star_token.span.start().line;
                self.leaf(None, prefix.clone(), line, "::*".to_owned());
            }
            UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(t, prefix);
                }
            }
        }
    }

    fn leaf(&mut self, name: Option<String>, target: Vec<String>, line: usize, suffix: String) {
        let text = format!("use {}{suffix}", target.join("::"));
        let leaf = UseLeaf {
            name,
            target,
            file: self.file,
            line,
            text,
        };
        self.scopes
            .entry(self.scope.clone())
            .or_default()
            .uses
            .push(leaf);
    }

    fn record(&mut self, segs: Vec<String>, line: usize) {
        self.paths.push(CodePath {
            scope: self.scope.clone(),
            segs,
            file: self.file,
            line,
        });
    }

    /// Paths inside a macro's arguments, which are tokens rather than syntax: every run of
    /// `ident :: ident :: …`.
    fn tokens(&mut self, stream: TokenStream) {
        let tokens: Vec<TokenTree> = stream.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Group(g) => {
                    self.tokens(g.stream());
                    i += 1;
                }
                TokenTree::Ident(id) => {
                    let mut segs = vec![ident(id)];
                    let mut j = i + 1;
                    while let (
                        Some(TokenTree::Punct(a)),
                        Some(TokenTree::Punct(b)),
                        Some(TokenTree::Ident(next)),
                    ) = (tokens.get(j), tokens.get(j + 1), tokens.get(j + 2))
                    {
                        if a.as_char() != ':' || a.spacing() != Spacing::Joint || b.as_char() != ':'
                        {
                            break;
                        }
                        segs.push(ident(next));
                        j += 3;
                    }
                    self.record(segs, line_of(id));
                    i = j;
                }
                _ => i += 1,
            }
        }
    }
}

/// `a::b::{self}` imports `a::b`; `a::b::C` imports `a::b::C`.
fn import_target(prefix: &[String], name: &str) -> Vec<String> {
    let mut target = prefix.to_vec();
    if name != "self" {
        target.push(name.to_owned());
    }
    target
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item(&mut self, item: &'ast Item) {
        if is_test(item_attrs(item)) {
            return;
        }
        match item {
            Item::Mod(m) => self.module(m),
            // `use ::name` is always another crate.
            Item::Use(u) if u.leading_colon.is_none() => self.use_tree(&u.tree, &mut Vec::new()),
            Item::Use(_) => {}
            _ => visit::visit_item(self, item),
        }
    }

    fn visit_impl_item(&mut self, item: &'ast ImplItem) {
        let attrs: &[Attribute] = match item {
            ImplItem::Const(i) => &i.attrs,
            ImplItem::Fn(i) => &i.attrs,
            ImplItem::Type(i) => &i.attrs,
            ImplItem::Macro(i) => &i.attrs,
            _ => &[],
        };
        if !is_test(attrs) {
            visit::visit_impl_item(self, item);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() {
            let segs = path.segments.iter().map(|s| ident(&s.ident)).collect();
            self.record(segs, line_of(&path.segments[0].ident));
        }
        visit::visit_path(self, path);
    }

    /// `pub(super)`, `pub(crate)`, `pub(in path)` say where a name may be used, not what this
    /// module uses: no edge.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        visit::visit_macro(self, mac);
        self.tokens(mac.tokens.clone());
    }
}

impl Graph {
    /// The groups of two or more modules that reach each other, each sorted, smallest name first.
    fn cycles(&self) -> Vec<Vec<String>> {
        let mut tarjan = Tarjan {
            adjacent: BTreeMap::new(),
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            found: Vec::new(),
        };
        for (from, to) in self.edges.keys() {
            tarjan
                .adjacent
                .entry(from.as_str())
                .or_default()
                .push(to.as_str());
        }
        for module in &self.modules {
            if !tarjan.index.contains_key(module.as_str()) {
                tarjan.visit(module);
            }
        }
        let mut cycles: Vec<Vec<String>> = tarjan
            .found
            .into_iter()
            .filter(|c| c.len() > 1)
            .map(|mut c| {
                c.sort();
                c.into_iter().map(str::to_owned).collect()
            })
            .collect();
        cycles.sort();
        cycles
    }

    /// What a developer needs to break `cycles`: their modules, then every edge inside each.
    fn report(&self, cycles: &[Vec<String>]) -> String {
        let mut out = format!(
            "src/ has {} import cycle(s); arrows between modules must point one way \
             (a lower layer never names a higher one).\n",
            cycles.len()
        );
        for (n, cycle) in cycles.iter().enumerate() {
            let members: BTreeSet<&str> = cycle.iter().map(String::as_str).collect();
            let inside: Vec<_> = self
                .edges
                .iter()
                .filter(|((from, to), _)| {
                    members.contains(from.as_str()) && members.contains(to.as_str())
                })
                .collect();
            let _ = writeln!(
                out,
                "\ncycle {}: {} modules reach each other: {}",
                n + 1,
                cycle.len(),
                cycle.join(", ")
            );
            let _ = writeln!(
                out,
                "its {} edges (break the loop by moving what one of them needs):",
                inside.len()
            );
            for ((from, to), sites) in inside {
                let back = self.shortest_path(&members, to, from).join(" → ");
                let _ = writeln!(out, "  {from} → {to}    (and back: {back})");
                for ((file, line), texts) in sites {
                    let _ = writeln!(out, "      {file}:{line}  {}", one_line(texts));
                }
            }
        }
        out
    }
}

impl Graph {
    /// The modules from `start` to `goal` through the fewest edges among `members`.
    fn shortest_path<'a>(
        &'a self,
        members: &BTreeSet<&str>,
        start: &'a str,
        goal: &str,
    ) -> Vec<&'a str> {
        let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(at) = queue.pop_front() {
            if at == goal {
                let mut path = vec![at];
                while let Some(prev) = came_from.get(path[path.len() - 1]) {
                    path.push(prev);
                }
                path.reverse();
                return path;
            }
            for (from, to) in self.edges.keys() {
                if from == at
                    && members.contains(to.as_str())
                    && to != start
                    && !came_from.contains_key(to.as_str())
                {
                    came_from.insert(to, from);
                    queue.push_back(to);
                }
            }
        }
        vec![start]
    }
}

/// The paths of one line; leaves of one `use` group read `use a::b::{self, C, D}`.
fn one_line(texts: &BTreeSet<String>) -> String {
    let fallback = || texts.iter().cloned().collect::<Vec<_>>().join(", ");
    let bare: Option<Vec<&str>> = texts.iter().map(|t| t.strip_prefix("use ")).collect();
    let Some(bare) = bare.filter(|b| b.len() > 1) else {
        return fallback();
    };
    let Some((module, _)) = bare.iter().filter_map(|b| b.rsplit_once("::")).max() else {
        return fallback();
    };
    let names: Option<Vec<&str>> = bare
        .iter()
        .map(|b| match b.strip_prefix(module) {
            Some("") => Some("self"),
            Some(rest) => rest.strip_prefix("::").filter(|n| !n.contains("::")),
            None => None,
        })
        .collect();
    match names {
        Some(names) => format!("use {module}::{{{}}}", names.join(", ")),
        None => fallback(),
    }
}

/// Tarjan's strongly connected components.
struct Tarjan<'a> {
    adjacent: BTreeMap<&'a str, Vec<&'a str>>,
    index: BTreeMap<&'a str, usize>,
    low: BTreeMap<&'a str, usize>,
    stack: Vec<&'a str>,
    on_stack: BTreeSet<&'a str>,
    found: Vec<Vec<&'a str>>,
}

impl<'a> Tarjan<'a> {
    fn visit(&mut self, node: &'a str) {
        let index = self.index.len();
        self.index.insert(node, index);
        self.low.insert(node, index);
        self.stack.push(node);
        self.on_stack.insert(node);
        let next = self.adjacent.get(node).cloned().unwrap_or_default();
        for to in next {
            if !self.index.contains_key(to) {
                self.visit(to);
                let low = self.low[node].min(self.low[to]);
                self.low.insert(node, low);
            } else if self.on_stack.contains(to) {
                let low = self.low[node].min(self.index[to]);
                self.low.insert(node, low);
            }
        }
        if self.low[node] == index {
            let mut component = Vec::new();
            while let Some(top) = self.stack.pop() {
                self.on_stack.remove(top);
                component.push(top);
                if top == node {
                    break;
                }
            }
            self.found.push(component);
        }
    }
}

#[test]
fn src_modules_form_no_import_cycle() {
    let graph = analyse(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap_or_else(|e| panic!("{e}"));
    // An empty graph would pass for the wrong reason: the check must see the crate.
    assert!(
        graph.modules.len() >= 10 && graph.edges.len() >= graph.modules.len(),
        "only {} modules and {} edges found in src/",
        graph.modules.len(),
        graph.edges.len()
    );
    let cycles = graph.cycles();
    assert!(cycles.is_empty(), "{}", graph.report(&cycles));
}

/// A crate made of `files` (paths below its folder, and their text) in a temporary folder.
fn fake_crate(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn edge_list(graph: &Graph) -> Vec<String> {
    graph
        .edges
        .keys()
        .map(|(from, to)| format!("{from} → {to}"))
        .collect()
}

#[test]
fn cycle_check_finds_two_modules_that_import_each_other() {
    let dir = fake_crate(&[
        ("src/lib.rs", "pub mod a;\npub mod b;\n"),
        (
            "src/main.rs",
            "fn main() {\n    sparkify::a::A(sparkify::b::B);\n}\n",
        ),
        ("src/a.rs", "use crate::b::B;\npub struct A(pub B);\n"),
        (
            "src/b.rs",
            "pub struct B;\npub fn make() -> crate::a::A {\n    crate::a::A(B)\n}\n",
        ),
    ]);
    let graph = analyse(dir.path()).unwrap();
    assert_eq!(graph.modules, ["a", "b", "crate"]);
    assert_eq!(edge_list(&graph), ["a → b", "b → a"]);
    let cycles = graph.cycles();
    assert_eq!(cycles, [["a", "b"]]);
    let report = graph.report(&cycles);
    assert!(
        report.contains("cycle 1: 2 modules reach each other: a, b\n"),
        "{report}"
    );
    assert!(
        report.contains("  a → b    (and back: b → a)\n      src/a.rs:1  use crate::b::B\n"),
        "{report}"
    );
    assert!(
        report.contains("  b → a    (and back: a → b)\n      src/b.rs:2  crate::a::A\n      src/b.rs:3  crate::a::A\n"),
        "{report}"
    );
}

const STORE_WITH_A_CHILD: [(&str, &str); 4] = [
    ("src/lib.rs", "pub mod store;\npub mod user;\n"),
    (
        "src/store/mod.rs",
        "pub mod disk;\npub use disk::Disk;\npub struct Shared;\n",
    ),
    (
        "src/store/disk.rs",
        "use super::Shared;\npub struct Disk(pub Shared);\n",
    ),
    (
        "src/user.rs",
        "pub fn open() -> crate::store::Disk {\n    crate::store::Disk(crate::store::Shared)\n}\n",
    ),
];

#[test]
fn cycle_check_lets_a_folder_reexport_its_children() {
    let dir = fake_crate(&STORE_WITH_A_CHILD);
    let graph = analyse(dir.path()).unwrap();
    // The re-exported name leads to the module that defines it.
    assert_eq!(
        edge_list(&graph),
        ["store::disk → store", "user → store", "user → store::disk"]
    );
    assert_eq!(graph.cycles(), Vec::<Vec<String>>::new());
}

#[test]
fn cycle_check_counts_a_folder_using_its_childs_names() {
    let mut files = STORE_WITH_A_CHILD;
    files[1].1 = "pub mod disk;\npub use disk::Disk;\npub struct Shared;\n\
                  pub fn open() -> Disk {\n    disk::Disk(Shared)\n}\n";
    let dir = fake_crate(&files);
    let graph = analyse(dir.path()).unwrap();
    let cycles = graph.cycles();
    assert_eq!(cycles, [["store", "store::disk"]]);
    let report = graph.report(&cycles);
    assert!(
        report.contains(
            "  store → store::disk    (and back: store::disk → store)\n      src/store/mod.rs:4  Disk\n      \
             src/store/mod.rs:5  disk::Disk\n"
        ),
        "{report}"
    );
    assert!(
        report.contains("  store::disk → store    (and back: store → store::disk)\n      src/store/disk.rs:1  use super::Shared\n"),
        "{report}"
    );
}

#[test]
fn cycle_check_counts_a_folder_using_names_its_glob_brought_in() {
    let mut files = STORE_WITH_A_CHILD;
    files[1].1 = "pub mod disk;\npub use disk::*;\npub struct Shared;\n\
                  pub fn open() -> Disk {\n    Disk(Shared)\n}\n";
    let dir = fake_crate(&files);
    let graph = analyse(dir.path()).unwrap();
    assert_eq!(graph.cycles(), [["store", "store::disk"]]);
    let sites: Vec<_> = graph.edges[&("store".to_owned(), "store::disk".to_owned())]
        .keys()
        .collect();
    assert_eq!(
        sites,
        [
            &("src/store/mod.rs".to_owned(), 4),
            &("src/store/mod.rs".to_owned(), 5)
        ]
    );
}

#[test]
fn cycle_check_follows_super_paths() {
    let dir = fake_crate(&[
        ("src/lib.rs", "pub mod a;\n"),
        ("src/a/mod.rs", "pub mod b;\npub fn top() {}\n"),
        (
            "src/a/b.rs",
            "pub fn g() {\n    super::top();\n}\npub mod c {\n    pub fn h() {\n        \
             super::g();\n    }\n}\n",
        ),
    ]);
    let graph = analyse(dir.path()).unwrap();
    // `super` inside the inline `mod c` is `a::b` itself: no edge.
    assert_eq!(edge_list(&graph), ["a::b → a"]);
    let sites = &graph.edges[&("a::b".to_owned(), "a".to_owned())];
    let sites: Vec<_> = sites.iter().collect();
    assert_eq!(
        sites,
        [(
            &("src/a/b.rs".to_owned(), 2),
            &BTreeSet::from(["super::top".to_owned()])
        )]
    );
}

#[test]
fn cycle_check_reads_use_trees_inline_modules_and_macros_but_not_tests_or_visibility() {
    let dir = fake_crate(&[
        (
            "src/lib.rs",
            "pub mod a;\npub mod b;\npub mod c;\npub mod d;\npub mod e;\npub mod f;\n",
        ),
        (
            "src/a.rs",
            "use crate::{b::{self, B as Bee}, c::*};\n\
             mod inner {\n    pub fn value() -> u8 {\n        crate::d::deep::VALUE\n    }\n}\n\
             pub fn show() {\n    println!(\"{}\", crate::f::NAME);\n}\n\
             #[cfg(test)]\nmod tests {\n    use crate::e::E;\n}\n",
        ),
        ("src/b.rs", "pub struct B;\n"),
        ("src/c.rs", "pub struct C;\n"),
        ("src/d/mod.rs", "pub mod deep;\n"),
        (
            "src/d/deep.rs",
            "pub const VALUE: u8 = 1;\npub(super) const NEAR: u8 = 2;\n\
             pub(crate) const ALL: u8 = 3;\npub(in crate::d) const SOME: u8 = 4;\n",
        ),
        ("src/e.rs", "pub struct E;\n"),
        ("src/f.rs", "pub const NAME: &str = \"f\";\n"),
    ]);
    let graph = analyse(dir.path()).unwrap();
    assert_eq!(
        edge_list(&graph),
        ["a → b", "a → c", "a → d::deep", "a → f"]
    );
    let b: Vec<_> = graph.edges[&("a".to_owned(), "b".to_owned())]
        .values()
        .flatten()
        .collect();
    assert_eq!(b, ["use crate::b", "use crate::b::B as Bee"]);
    assert_eq!(graph.cycles(), Vec::<Vec<String>>::new());
}

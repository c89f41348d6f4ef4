//! The docs cannot rot: every `airgap-snapshotter ...` command in a fenced
//! `sh` block of README.md and docs/**/*.md parses with the real binary's
//! CLI (run with `--help` appended: an unknown command, flag or bad value
//! fails), every `scripts/...` and `integration/...` path they name exists,
//! every relative link points at a file, every daemon config file they show
//! (a block fenced `toml airgap-snapshotter.toml`) loads, every other `toml`
//! block is TOML, and the synopsis in docs/reference.md lists exactly the
//! flags of each command's `--help`. A block that must not be checked is
//! fenced `text` or `console`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_airgap-snapshotter");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("plugin/ has a parent")
        .to_path_buf()
}

/// README.md and every Markdown file under docs/, as (path, text).
fn docs() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let root = repo();
    let mut paths = vec![root.join("README.md")];
    walk(&root.join("docs"), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            (p, text)
        })
        .collect()
}

/// A fenced block: its info string, first line number (1-based) and lines.
struct Block {
    info: String,
    line: usize,
    body: Vec<String>,
}

fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("```") {
            match current.take() {
                Some(block) => out.push(block),
                None => {
                    current = Some(Block {
                        info: rest.trim().to_string(),
                        line: i + 2,
                        body: Vec::new(),
                    })
                }
            }
        } else if let Some(block) = current.as_mut() {
            block.body.push(trimmed.to_string());
        }
    }
    assert!(current.is_none(), "a fenced block is not closed");
    out
}

/// Shell words of one simple command line, split into commands at `&&`,
/// `||`, `;` and `|`, with comments and redirections (`> FILE`) dropped.
/// Written by hand: the docs use a small subset of the shell (quotes,
/// backslashes, `$VAR`, `$(...)` as one word), and no crate splits on
/// operators as well as on words.
fn commands(line: &str) -> Vec<Vec<String>> {
    let mut cmds = vec![Vec::new()];
    let mut word = String::new();
    let mut in_word = false;
    let mut redirect = false;
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    let mut depth = 0usize; // inside $( ... )
    let end_word = |word: &mut String,
                    in_word: &mut bool,
                    redirect: &mut bool,
                    cmds: &mut Vec<Vec<String>>| {
        if *in_word {
            if *redirect {
                *redirect = false;
            } else {
                cmds.last_mut()
                    .expect("one command")
                    .push(std::mem::take(word));
            }
            word.clear();
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            } else if c == '\\' && q == '"' {
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            } else {
                word.push(c);
            }
            continue;
        }
        if depth > 0 {
            word.push(c);
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                in_word = true;
            }
            '\\' => {
                if let Some(n) = chars.next() {
                    word.push(n);
                    in_word = true;
                }
            }
            '$' if chars.peek() == Some(&'(') => {
                word.push(c);
                word.push(chars.next().expect("peeked"));
                depth = 1;
                in_word = true;
            }
            '#' if !in_word => break,
            ' ' | '\t' => end_word(&mut word, &mut in_word, &mut redirect, &mut cmds),
            ';' | '|' | '&' => {
                end_word(&mut word, &mut in_word, &mut redirect, &mut cmds);
                if chars.peek() == Some(&c) {
                    chars.next();
                }
                cmds.push(Vec::new());
            }
            '>' | '<' => {
                end_word(&mut word, &mut in_word, &mut redirect, &mut cmds);
                if chars.peek() == Some(&c) {
                    chars.next();
                }
                redirect = true;
            }
            _ => {
                word.push(c);
                in_word = true;
            }
        }
    }
    end_word(&mut word, &mut in_word, &mut redirect, &mut cmds);
    cmds.retain(|c| !c.is_empty());
    cmds
}

/// The logical lines of a shell block: continuation lines joined.
fn logical_lines(body: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut acc = String::new();
    for line in body {
        if let Some(head) = line.strip_suffix('\\') {
            acc.push_str(head);
            acc.push(' ');
        } else {
            acc.push_str(line);
            out.push(std::mem::take(&mut acc));
        }
    }
    if !acc.is_empty() {
        out.push(acc);
    }
    out
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {BIN}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn splits_shell_lines_as_the_docs_use_them() {
    assert_eq!(
        commands(r#"a --x "$T" > "$T" && b 'c d' | e # f"#),
        vec![vec!["a", "--x", "$T"], vec!["b", "c d"], vec!["e"]]
    );
    assert_eq!(
        commands(r#"[ -e "$T" ] && cp -a "$T" "$T.$(date +%s).bak""#),
        vec![
            vec!["[", "-e", "$T", "]"],
            vec!["cp", "-a", "$T", "$T.$(date +%s).bak"]
        ]
    );
    assert_eq!(
        commands(r#"sed -i 's|^# a = .*|a = "/run"|' f"#),
        vec![vec!["sed", "-i", r#"s|^# a = .*|a = "/run"|"#, "f"]]
    );
}

#[test]
fn every_documented_command_parses() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for (path, text) in docs() {
        for block in blocks(&text) {
            let lang = block.info.split_whitespace().next().unwrap_or("");
            if !matches!(lang, "sh" | "bash" | "shell") {
                continue;
            }
            for line in logical_lines(&block.body) {
                for cmd in commands(&line) {
                    if cmd[0] != "airgap-snapshotter" {
                        continue;
                    }
                    let mut args: Vec<&str> = cmd[1..].iter().map(String::as_str).collect();
                    args.push("--help");
                    let (ok, out) = run(&args);
                    checked += 1;
                    if !ok {
                        failures.push(format!(
                            "{} (block at line {}): `{}`: {}",
                            path.display(),
                            block.line,
                            cmd.join(" "),
                            out.lines().next().unwrap_or("")
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "commands that do not parse:\n{}",
        failures.join("\n")
    );
    assert!(
        checked >= 20,
        "only {checked} commands found in the docs' sh blocks"
    );
}

#[test]
fn a_command_with_a_bad_flag_fails_the_check() {
    // The check above is only worth something if --help does not hide errors.
    assert!(!run(&["config", "--no-such-flag", "--help"]).0);
    assert!(!run(&["no-such-command", "--help"]).0);
    assert!(!run(&["config", "--containerd", "9", "--help"]).0);
}

#[test]
fn every_named_script_and_linked_file_exists() {
    let root = repo();
    let path_re =
        regex::Regex::new(r"\b(?:scripts|integration|plugin)/[A-Za-z0-9_./-]*").expect("regex");
    // [text](file#anchor), [text](#anchor); not URLs (a scheme has a colon).
    let link_re = regex::Regex::new(r"\]\(([^)#:\s]*)(?:#([^)\s]*))?\)").expect("regex");
    let mut missing = Vec::new();
    for (path, text) in docs() {
        for m in path_re.find_iter(&text) {
            let named = m.as_str().trim_end_matches(['.', '/']);
            // "integration/tests/*.rs", "<root>/layers": patterns, not paths.
            let after = text[m.end()..].chars().next();
            if matches!(after, Some('*' | '<')) {
                continue;
            }
            if !root.join(named).exists() {
                missing.push(format!("{}: {named}", path.display()));
            }
        }
        let dir = path.parent().expect("a doc has a directory");
        for c in link_re.captures_iter(&text) {
            let target = &c[1];
            let file = if target.is_empty() {
                path.clone()
            } else {
                dir.join(target)
            };
            if !file.exists() {
                missing.push(format!("{}: link {target}", path.display()));
                continue;
            }
            if let Some(anchor) = c.get(2) {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                if !anchors(&text).contains(anchor.as_str()) {
                    missing.push(format!(
                        "{}: link {target}#{}",
                        path.display(),
                        anchor.as_str()
                    ));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "named in the docs, not in the repository:\n{}",
        missing.join("\n")
    );
}

/// The anchors GitHub makes of a Markdown file's headings: lower case,
/// spaces to `-`, punctuation other than `-` and `_` dropped.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let heading = line.trim_start_matches('#').trim();
        let slug: String = heading
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        out.insert(slug);
    }
    out
}

#[test]
fn every_toml_block_parses_and_config_files_load() {
    let mut failures = Vec::new();
    let mut configs = 0;
    for (path, text) in docs() {
        for block in blocks(&text) {
            let mut info = block.info.split_whitespace();
            if info.next() != Some("toml") {
                continue;
            }
            let body = block.body.join("\n");
            let at = format!("{} (block at line {})", path.display(), block.line);
            if info.next() == Some("airgap-snapshotter.toml") {
                configs += 1;
                let dir = tempfile::tempdir().expect("temp dir");
                let file = dir.path().join("airgap-snapshotter.toml");
                std::fs::write(&file, &body).expect("write config");
                if let Err(e) = airgap_snapshotter::config::Config::from_file(&file) {
                    failures.push(format!("{at}: {e}"));
                }
            } else if let Err(e) = body.parse::<toml::Table>() {
                failures.push(format!("{at}: {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "toml blocks that do not load:\n{}",
        failures.join("\n")
    );
    assert!(
        configs >= 1,
        "no `toml airgap-snapshotter.toml` block found"
    );
}

/// Long flags of `airgap-snapshotter CMD --help` (without --help, --version).
fn help_flags(cmd: &str) -> BTreeSet<String> {
    let (ok, out) = run(&[cmd, "--help"]);
    assert!(ok, "{cmd} --help failed: {out}");
    let re = regex::Regex::new(r"^\s+(?:-\w, )?--([a-z][a-z0-9-]*)").expect("regex");
    out.lines()
        .filter_map(|l| re.captures(l).map(|c| c[1].to_string()))
        .filter(|f| f != "help" && f != "version")
        .collect()
}

/// The subcommands `airgap-snapshotter --help` lists.
fn help_commands() -> BTreeSet<String> {
    let (ok, out) = run(&["--help"]);
    assert!(ok, "--help failed: {out}");
    out.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn the_synopsis_matches_help() {
    let reference =
        std::fs::read_to_string(repo().join("docs/reference.md")).expect("read docs/reference.md");
    let synopsis = blocks(&reference)
        .into_iter()
        .find(|b| b.info == "text synopsis")
        .expect("docs/reference.md has a block fenced `text synopsis`");
    let flag_re = regex::Regex::new(r"--([a-z][a-z0-9-]*)").expect("regex");
    let mut documented: Vec<(String, BTreeSet<String>)> = Vec::new();
    for line in &synopsis.body {
        let mut words = line.split_whitespace();
        if words.next() == Some("airgap-snapshotter") {
            let cmd = words.next().expect("a command after airgap-snapshotter");
            if cmd.starts_with('[') {
                continue; // the global options' line
            }
            documented.push((cmd.to_string(), BTreeSet::new()));
        }
        let (_, flags) = documented
            .last_mut()
            .expect("the synopsis starts with a command");
        flags.extend(flag_re.captures_iter(line).map(|c| c[1].to_string()));
    }
    let names: BTreeSet<String> = documented.iter().map(|(c, _)| c.clone()).collect();
    assert_eq!(
        names,
        help_commands(),
        "the synopsis' commands against --help"
    );
    for (cmd, flags) in documented {
        let mut flags = flags;
        let mut help = help_flags(&cmd);
        for global in ["log-level", "log-format"] {
            // global, shown once in the synopsis
            flags.remove(global);
            help.remove(global);
        }
        assert_eq!(
            flags, help,
            "`{cmd}`: the synopsis' flags (left) against `{cmd} --help` (right)"
        );
    }
}

/// `--help`'s list of commands with their one-line summaries.
fn help_summaries() -> Vec<(String, String)> {
    let (ok, out) = run(&["--help"]);
    assert!(ok, "--help failed: {out}");
    out.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| {
            let l = l.trim();
            let (cmd, about) = l.split_once(char::is_whitespace)?;
            (cmd != "help").then(|| (cmd.to_string(), about.trim().to_string()))
        })
        .collect()
}

/// Lower-cased first letter, no final period, one space between words,
/// no backticks: a summary as the README and `--help` may each write it.
fn normalized(s: &str) -> String {
    let s = s.replace('`', "");
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let s = s.trim_end_matches('.');
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The README's synopsis of the commands (the table under `## Commands`)
/// is `--help`'s: the same commands in the same order, each with the same
/// summary; and its exit codes are those `--help` lists.
#[test]
fn the_readme_synopsis_matches_help() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("read README.md");
    let row_re = regex::Regex::new(r"(?m)^\| `([a-z]+)` \| (.*?) \|$").expect("regex");
    let rows: Vec<(String, String)> = row_re
        .captures_iter(&readme)
        .map(|c| (c[1].to_string(), normalized(&c[2])))
        .collect();
    let help: Vec<(String, String)> = help_summaries()
        .into_iter()
        .map(|(c, a)| (c, normalized(&a)))
        .collect();
    assert_eq!(
        rows, help,
        "README's table of commands (left) against `airgap-snapshotter --help` (right)"
    );

    let (ok, out) = run(&["--help"]);
    assert!(ok, "--help failed: {out}");
    let code_re = regex::Regex::new(r"^\s+([0-9])\s+([^(]+)").expect("regex");
    let codes: Vec<String> = out
        .lines()
        .skip_while(|l| !l.starts_with("Exit codes:"))
        .filter_map(|l| {
            code_re
                .captures(l)
                .map(|c| format!("{} {}", &c[1], c[2].trim()))
        })
        .collect();
    assert_eq!(codes.len(), 4, "--help lists exit codes 0 to 3: {out}");
    let flat = normalized(&readme);
    for code in codes {
        assert!(
            flat.contains(&code),
            "README does not give the exit code `{code}` as --help does"
        );
    }
}

/// The synopsis' test fails when a flag is missing from it or a summary
/// differs: its comparison is not vacuous.
#[test]
fn help_lists_commands_and_flags() {
    assert!(help_flags("config").contains("hosts-dir"));
    assert!(
        !help_flags("config").contains("mirror"),
        "--mirror is a hidden alias"
    );
    assert_eq!(help_summaries().len(), help_commands().len());
    assert_eq!(normalized("Run `it`  now."), "run it now");
}

/// Every `sed -i ... /etc/airgap-snapshotter/airgap-snapshotter.toml` the
/// docs give (k3s and rke2: the containerd socket) is run on a copy of the
/// shipped config file, which must then load with k3s's socket.
#[test]
fn the_k3s_socket_edit_works_on_the_shipped_config() {
    const TARGET: &str = "/etc/airgap-snapshotter/config.toml";
    let shipped = repo().join("scripts/airgap-snapshotter.toml");
    let mut ran = 0;
    for (path, text) in docs() {
        for block in blocks(&text) {
            if !block.info.starts_with("sh") {
                continue;
            }
            for line in logical_lines(&block.body) {
                for cmd in commands(&line) {
                    if cmd[0] != "sed" || cmd.last().map(String::as_str) != Some(TARGET) {
                        continue;
                    }
                    let dir = tempfile::tempdir().expect("temp dir");
                    let copy = dir.path().join("airgap-snapshotter.toml");
                    std::fs::copy(&shipped, &copy).expect("copy the shipped config");
                    let status = Command::new("sed")
                        .args(&cmd[1..cmd.len() - 1])
                        .arg(&copy)
                        .status()
                        .expect("run sed");
                    assert!(
                        status.success(),
                        "{}: `{}` failed",
                        path.display(),
                        cmd.join(" ")
                    );
                    let config = airgap_snapshotter::config::Config::from_file(&copy)
                        .unwrap_or_else(|e| {
                            panic!("{}: the edited config does not load: {e}", path.display())
                        });
                    assert_eq!(
                        config.containerd_address,
                        Path::new("/run/k3s/containerd/containerd.sock"),
                        "{}: `{}` did not set the socket",
                        path.display(),
                        cmd.join(" ")
                    );
                    ran += 1;
                }
            }
        }
    }
    assert!(
        ran >= 3,
        "only {ran} edits of {TARGET} found (README, k3s.md, rke2.md)"
    );
}

/// The template step of the k3s and rke2 paths (`T=...`, the backup of an
/// existing template, `config --containerd-template > "$T"`) is run as the
/// docs give it, with `T` in a temp dir: the first run writes the template,
/// the second keeps the first as a `.bak` beside it.
#[test]
fn the_template_step_backs_up_the_existing_template() {
    let mut ran = 0;
    for (path, text) in docs() {
        for block in blocks(&text) {
            if !block.info.starts_with("sh") {
                continue;
            }
            let lines: Vec<String> = logical_lines(&block.body)
                .into_iter()
                .filter(|l| l.starts_with("T=") || l.contains("\"$T\""))
                .collect();
            if lines.is_empty() {
                continue;
            }
            let dir = tempfile::tempdir().expect("temp dir");
            let template = dir.path().join("config-v3.toml.tmpl");
            let script: Vec<String> = lines
                .iter()
                .map(|l| match l.strip_prefix("T=") {
                    Some(rest) => {
                        let tail = rest.split_once(' ').map_or("", |(_, t)| t);
                        format!("T={} {tail}", template.display())
                    }
                    None => l.replace("airgap-snapshotter config", &format!("{BIN} config")),
                })
                .collect();
            let script = script.join("\n");
            let at = format!("{} (block at line {})", path.display(), block.line);
            for _ in 0..2 {
                let out = Command::new("sh")
                    .arg("-ec")
                    .arg(&script)
                    .output()
                    .expect("run sh");
                assert!(
                    out.status.success(),
                    "{at}: the template step failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let written = std::fs::read_to_string(&template).expect("the template is written");
            assert!(
                written.contains("[proxy_plugins.airgap]"),
                "{at}: no proxy plugin in the template:\n{written}"
            );
            let backups: Vec<PathBuf> = std::fs::read_dir(dir.path())
                .expect("read temp dir")
                .map(|e| e.expect("entry").path())
                .filter(|p| p.extension().is_some_and(|e| e == "bak"))
                .collect();
            assert_eq!(
                backups.len(),
                1,
                "{at}: one backup expected, found {backups:?}"
            );
            assert_eq!(
                std::fs::read_to_string(&backups[0]).expect("read backup"),
                written,
                "{at}"
            );
            ran += 1;
        }
    }
    assert!(
        ran >= 3,
        "only {ran} template steps found (README, k3s.md, rke2.md)"
    );
}

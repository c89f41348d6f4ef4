//! The line edit of a registries.yaml: the plan (entries added, endpoint
//! lists changed) applied to the original text line by line, so comments,
//! quoting and order stay; `None` for a layout it does not handle (the
//! caller then writes the parsed document out whole).

use super::{same_endpoint, Plan, RegistriesWant};

/// A YAML double-quoted scalar.
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A mapping key as written for a new entry.
pub(super) fn key_text(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && !k.starts_with(['-', '.'])
    {
        k.to_string()
    } else {
        quoted(k)
    }
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// `text` without a trailing ` # comment` (outside quotes), and the comment.
fn split_comment(text: &str) -> (&str, &str) {
    let mut quote: Option<char> = None;
    let mut prev_space = true;
    for (i, c) in text.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev_space => return (text[..i].trim_end(), &text[i..]),
            None => {}
        }
        prev_space = c == ' ' || c == '\t';
    }
    (text.trim_end(), "")
}

fn unquote(s: &str) -> Option<String> {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        if inner.contains('\\') || inner.contains('"') {
            return None;
        }
        return Some(inner.to_string());
    }
    if let Some(inner) = s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        if inner.contains('\'') {
            return None;
        }
        return Some(inner.to_string());
    }
    if s.starts_with(['"', '\'', '&', '*', '!', '{', '[', '|', '>']) {
        return None;
    }
    Some(s.to_string())
}

/// A `key: value` line: (key, value text, comment).
fn key_value(line: &str) -> Option<(String, &str, &str)> {
    let (code, comment) = split_comment(line.trim_start());
    // The key ends at the first `: ` (or a final `:`) outside quotes.
    let mut quote: Option<char> = None;
    for (i, c) in code.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == ':' && code[i + 1..].is_empty() => {
                return Some((unquote(&code[..i])?, "", comment));
            }
            None if c == ':' && code[i + 1..].starts_with(' ') => {
                return Some((unquote(&code[..i])?, code[i + 1..].trim(), comment));
            }
            None => {}
        }
    }
    None
}

/// The line edit: `None` when the layout is one it does not handle.
pub(super) fn edit_lines(original: &str, plan: &Plan, want: &RegistriesWant) -> Option<String> {
    let lines: Vec<&str> = original.lines().collect();
    if lines
        .iter()
        .any(|l| l.starts_with("---") || l.starts_with("...") || l.contains('\t'))
    {
        return None;
    }
    // Per line: lines inserted before it, and its replacement (None: delete).
    let mut before: Vec<Vec<String>> = vec![Vec::new(); lines.len() + 1];
    let mut replace: Vec<Option<Option<String>>> = vec![None; lines.len()];
    let entry_block = |indent: usize, name: &str, list: &[String]| -> Vec<String> {
        let pad = " ".repeat(indent);
        let mut out = vec![
            format!("{pad}{}:", key_text(name)),
            format!("{pad}  endpoint:"),
        ];
        out.extend(list.iter().map(|e| format!("{pad}    - {}", quoted(e))));
        out
    };

    let mirrors_line = lines
        .iter()
        .position(|l| indent_of(l) == 0 && key_value(l).is_some_and(|(k, _, _)| k == "mirrors"));
    let Some(m) = mirrors_line else {
        // No `mirrors:` at all: a new block at the end.
        let mut text = original.to_string();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        if !text.trim().is_empty() {
            text.push('\n');
        }
        text.push_str("mirrors:\n");
        for (name, list) in &plan.added {
            for l in entry_block(2, name, list) {
                text.push_str(&l);
                text.push('\n');
            }
        }
        return Some(text);
    };
    let (_, value, _) = key_value(lines[m])?;
    if !value.is_empty() && value != "~" && value != "null" {
        return None; // `mirrors: {...}`: flow style
    }
    let end = (m + 1..lines.len())
        .find(|&i| is_content(lines[i]) && indent_of(lines[i]) == 0)
        .unwrap_or(lines.len());
    let child = (m + 1..end)
        .find(|&i| is_content(lines[i]))
        .map(|i| indent_of(lines[i]))
        .unwrap_or(2);
    if value == "~" || value == "null" {
        if (m + 1..end).any(|i| is_content(lines[i])) {
            return None;
        }
        replace[m] = Some(Some("mirrors:".into()));
    }
    for (name, list) in &plan.added {
        before[m + 1].extend(entry_block(child, name, list));
    }
    // The existing entries.
    let mut i = m + 1;
    while i < end {
        if !is_content(lines[i]) {
            i += 1;
            continue;
        }
        if indent_of(lines[i]) != child {
            return None;
        }
        let (name, value, _) = key_value(lines[i])?;
        if !value.is_empty() && value != "~" && value != "null" {
            return None;
        }
        let body_end = (i + 1..end)
            .find(|&j| is_content(lines[j]) && indent_of(lines[j]) <= child)
            .unwrap_or(end);
        let list = match plan.changed.iter().find(|(n, _)| *n == name) {
            Some((_, l)) => l,
            None => {
                i = body_end;
                continue;
            }
        };
        if value == "~" || value == "null" {
            let pad = " ".repeat(child);
            replace[i] = Some(Some(format!("{pad}{}:", key_text(&name))));
        }
        let grand = (i + 1..body_end)
            .find(|&j| is_content(lines[j]))
            .map(|j| indent_of(lines[j]))
            .unwrap_or(child + 2);
        let endpoint = (i + 1..body_end).find(|&j| {
            is_content(lines[j])
                && indent_of(lines[j]) == grand
                && key_value(lines[j]).is_some_and(|(k, _, _)| k == "endpoint")
        });
        match endpoint {
            None => {
                let pad = " ".repeat(grand);
                before[i + 1].push(format!("{pad}endpoint:"));
                before[i + 1].extend(list.iter().map(|e| format!("{pad}  - {}", quoted(e))));
            }
            Some(e) => {
                let (_, value, comment) = key_value(lines[e])?;
                let pad = " ".repeat(grand);
                if value.starts_with('[') {
                    if !value.ends_with(']') {
                        return None;
                    }
                    let items: Vec<String> = list.iter().map(|x| quoted(x)).collect();
                    let comment = if comment.is_empty() {
                        String::new()
                    } else {
                        format!(" {comment}")
                    };
                    replace[e] = Some(Some(format!(
                        "{pad}endpoint: [{}]{comment}",
                        items.join(", ")
                    )));
                } else if value.is_empty() || value == "~" || value == "null" {
                    if value == "~" || value == "null" {
                        replace[e] = Some(Some(format!("{pad}endpoint:")));
                    }
                    // The block list's items: `- x` lines at or under the key.
                    let mut items = Vec::new();
                    let mut j = e + 1;
                    while j < body_end {
                        if !is_content(lines[j]) {
                            j += 1;
                            continue;
                        }
                        let t = lines[j].trim_start();
                        if indent_of(lines[j]) >= grand && t.starts_with("- ") {
                            items.push(j);
                            j += 1;
                        } else if indent_of(lines[j]) > grand {
                            return None; // a multi-line item
                        } else {
                            break;
                        }
                    }
                    let item_pad = items
                        .first()
                        .map(|&j| " ".repeat(indent_of(lines[j])))
                        .unwrap_or_else(|| " ".repeat(grand + 2));
                    let mut first_is_mirror = false;
                    for (n, &j) in items.iter().enumerate() {
                        let (code, _) = split_comment(lines[j].trim_start()[2..].trim());
                        let v = unquote(code)?;
                        if same_endpoint(&v, &want.mirror) {
                            if n == 0 {
                                first_is_mirror = true;
                            } else {
                                replace[j] = Some(None);
                            }
                        }
                    }
                    if !first_is_mirror {
                        let at = items.first().copied().unwrap_or(e + 1);
                        before[at].push(format!("{item_pad}- {}", quoted(&want.mirror)));
                    }
                } else {
                    return None;
                }
            }
        }
        i = body_end;
    }
    let mut out = String::new();
    for (n, line) in lines.iter().enumerate() {
        for l in &before[n] {
            out.push_str(l);
            out.push('\n');
        }
        match &replace[n] {
            None => {
                out.push_str(line);
                out.push('\n');
            }
            Some(Some(l)) => {
                out.push_str(l);
                out.push('\n');
            }
            Some(None) => {}
        }
    }
    for l in &before[lines.len()] {
        out.push_str(l);
        out.push('\n');
    }
    if !original.ends_with('\n') && !original.is_empty() && out.ends_with('\n') {
        // Keep the file's own ending unless lines were added after it.
        if before[lines.len()].is_empty() {
            out.pop();
        }
    }
    Some(out)
}

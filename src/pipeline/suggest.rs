//! "Did you mean" for misspelt keys, kinds and names.

/// The closest candidate to `word`, if one is close enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) && *d < c.len().max(word.len()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// "did you mean `x`?" plus the list of what is allowed.
pub fn help<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str> + Clone) -> String {
    let list: Vec<String> = candidates
        .clone()
        .into_iter()
        .map(|c| format!("`{c}`"))
        .collect();
    let expected = if list.is_empty() {
        "nothing is allowed here".to_owned()
    } else {
        format!("expected one of {}", list.join(", "))
    };
    match closest(word, candidates) {
        Some(c) => format!("did you mean `{c}`? ({expected})"),
        None => expected,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn suggests_typos_only() {
        assert_eq!(super::closest("lrr", ["lr", "epochs"]), Some("lr"));
        assert_eq!(super::closest("trian", ["train", "tune"]), Some("train"));
        assert_eq!(super::closest("zzzzzz", ["lr", "epochs"]), None);
    }
}

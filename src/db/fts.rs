//! What the full-text index sees of a memory, and what a keyword query asks of it (pure).
//!
//! The index is FTS5 with `porter unicode61`: English words are stemmed (`migrations` and
//! `migration` are one term). Scripts written without spaces between words (Japanese, Chinese,
//! Thai, …) have no word boundaries for `unicode61` to find, so a run of their characters is
//! indexed as its overlapping character bigrams (`データベース` → `デー ータ タベ ベー ース`),
//! the way CJK search engines index it: a word inside a longer run is found by its bigrams, two
//! characters long words included (a trigram index cannot find those). `fts_text` is registered
//! as an SQL function on every connection, so the triggers that keep the index in step index
//! exactly what a query asks for.

/// A character of a script written without spaces between words.
pub fn is_unspaced(c: char) -> bool {
    matches!(c as u32,
        0x0E00..=0x0EFF       // Thai, Lao
        | 0x1000..=0x109F     // Myanmar
        | 0x1780..=0x17FF     // Khmer
        | 0x3005..=0x3007     // 々 〆 〇
        | 0x3040..=0x30FF     // Hiragana, Katakana (ー included)
        | 0x3100..=0x312F     // Bopomofo
        | 0x31F0..=0x31FF     // Katakana extensions
        | 0x3400..=0x4DBF     // CJK extension A
        | 0x4E00..=0x9FFF     // CJK unified ideographs
        | 0xAC00..=0xD7AF     // Hangul syllables (particles attach to words)
        | 0xF900..=0xFAFF     // CJK compatibility ideographs
        | 0xFF66..=0xFF9F     // halfwidth Katakana
        | 0x20000..=0x3134F // CJK extensions B to G
    )
}

/// The runs of `text`: `(true, run)` for a run of unspaced-script characters, `(false, part)`
/// for the text between them.
fn runs(text: &str) -> impl Iterator<Item = (bool, &str)> {
    let mut rest = text;
    std::iter::from_fn(move || {
        let first = rest.chars().next()?;
        let unspaced = is_unspaced(first);
        let end = rest
            .char_indices()
            .find(|(_, c)| is_unspaced(*c) != unspaced)
            .map_or(rest.len(), |(i, _)| i);
        let (run, tail) = rest.split_at(end);
        rest = tail;
        Some((unspaced, run))
    })
}

/// The overlapping bigrams of a run (a single character stays itself).
fn bigrams(run: &str) -> Vec<String> {
    let chars: Vec<char> = run.chars().collect();
    if chars.len() < 2 {
        return vec![run.to_owned()];
    }
    chars.windows(2).map(|w| w.iter().collect()).collect()
}

/// The text the full-text index holds for `text`: unchanged, except that every unspaced run is
/// replaced by its bigrams, spaces around.
pub fn index_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for (unspaced, run) in runs(text) {
        if unspaced {
            out.push(' ');
            out.push_str(&bigrams(run).join(" "));
            out.push(' ');
        } else {
            out.push_str(run);
        }
    }
    out
}

/// One term of a keyword query: the word as the user wrote it, and the FTS5 tokens that stand
/// for it (the word itself, stemmed by the index's tokenizer; or a run's bigrams).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub word: String,
    pub tokens: Vec<String>,
}

impl Term {
    /// The FTS5 expression matching this term: the quoted word, or the run's bigrams as a
    /// phrase (the run itself occurs). User text is never read as FTS5 syntax.
    pub fn phrase(&self) -> String {
        quote(&self.tokens.join(" "))
    }
}

pub fn quote(token: &str) -> String {
    format!("\"{}\"", token.replace('"', "\"\""))
}

/// The terms of a keyword query, each once: its words (split at spaces and punctuation, an
/// identifier like `INV-2024-0042` kept whole as a phrase) and its unspaced runs.
pub fn terms(query: &str) -> Vec<Term> {
    let mut out: Vec<Term> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for word in query.split_whitespace() {
        let word = word.trim_matches(|c: char| !c.is_alphanumeric());
        for (unspaced, part) in runs(word) {
            let part = part.trim_matches(|c: char| !c.is_alphanumeric());
            if part.is_empty() {
                continue;
            }
            if !seen.insert(part.to_lowercase()) {
                continue;
            }
            let tokens = if unspaced {
                bigrams(part)
            } else {
                vec![part.to_owned()]
            };
            out.push(Term {
                word: part.to_owned(),
                tokens,
            });
        }
    }
    out
}

/// The one token of an owner (a tenant's user) in the index's `owner` column: a hash of the two
/// ids, letters and digits only, so the tokenizer keeps it whole.
pub fn owner_token(tenant: &str, user: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(tenant.as_bytes())
        .chain_update(b"\n")
        .chain_update(user.as_bytes())
        .finalize();
    format!("ow{}", &hex::encode(digest)[..24])
}

/// The FTS5 expression of the owner's rows.
pub fn owner_filter(tenant: &str, user: &str) -> String {
    format!("owner : {}", quote(&owner_token(tenant, user)))
}

/// The columns a query's words are looked for in (never the owner column).
pub const TEXT_COLUMNS: &str = "{content summary tags}";

/// Registers `fts_text(text)` (the text the index holds, NULL for NULL) and
/// `fts_owner(tenant, user)` on a connection: the triggers that keep the index in step call
/// them, so every connection that writes memories has them.
pub fn register(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    let flags = FunctionFlags::SQLITE_UTF8
        | FunctionFlags::SQLITE_DETERMINISTIC
        | FunctionFlags::SQLITE_INNOCUOUS;
    conn.create_scalar_function("fts_text", 1, flags, |ctx| {
        let text: Option<String> = ctx.get(0)?;
        Ok(text.map(|t| index_text(&t)))
    })?;
    conn.create_scalar_function("fts_owner", 2, flags, |ctx| {
        let (tenant, user): (String, String) = (ctx.get(0)?, ctx.get(1)?);
        Ok(owner_token(&tenant, &user))
    })
}

/// Rows indexed per transaction while refilling.
const REBUILD_BATCH: i64 = 5_000;

/// Refills the full-text index after the migration that re-created it, oldest memory first, a
/// batch per transaction with the position saved in it: an interrupted refill resumes where it
/// stopped. Shows progress (a bar on a terminal, log lines otherwise) for large databases.
pub fn rebuild_pending(conn: &mut rusqlite::Connection) -> anyhow::Result<()> {
    use rusqlite::OptionalExtension;
    let Some(mut next) = conn
        .query_row("SELECT next_seq FROM fts_rebuild", [], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
    else {
        return Ok(());
    };
    let (left, last): (i64, i64) = conn.query_row(
        "SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM memories WHERE seq > ?1",
        [next],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let started = std::time::Instant::now();
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = (terminal && left > REBUILD_BATCH).then(|| {
        indicatif::ProgressBar::new(left as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        )
    });
    if let Some(bar) = &bar {
        bar.set_message("rebuilding the full-text index");
    } else if left > 0 {
        tracing::info!(memories = left, "rebuilding the full-text index");
    }
    let mut done: i64 = 0;
    let mut logged = std::time::Instant::now();
    while next < last {
        let tx = conn.transaction()?;
        let upto: i64 = tx.query_row(
            "SELECT COALESCE(MAX(seq), ?1) FROM
               (SELECT seq FROM memories WHERE seq > ?1 ORDER BY seq LIMIT ?2)",
            [next, REBUILD_BATCH],
            |r| r.get(0),
        )?;
        let n = tx.execute(
            "INSERT INTO memories_fts (rowid, content, summary, tags, owner)
             SELECT seq, fts_text(content), fts_text(summary), fts_text(tags),
                    fts_owner(tenant_id, user_id)
             FROM memories WHERE seq > ?1 AND seq <= ?2",
            [next, upto],
        )?;
        tx.execute("UPDATE fts_rebuild SET next_seq = ?1", [upto])?;
        tx.commit()?;
        next = upto;
        done += n as i64;
        if let Some(bar) = &bar {
            bar.set_position(done as u64);
        } else if logged.elapsed().as_secs() >= 2 {
            logged = std::time::Instant::now();
            tracing::info!(done, of = left, "rebuilding the full-text index");
        }
    }
    conn.execute("DELETE FROM fts_rebuild", [])?;
    if let Some(bar) = bar {
        bar.finish_with_message("full-text index rebuilt");
    }
    if left > 0 {
        tracing::info!(
            memories = done,
            seconds = started.elapsed().as_secs_f64(),
            "full-text index rebuilt"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspaced_runs_become_bigrams() {
        assert_eq!(
            index_text("データベースの移行が失敗した"),
            " デー ータ タベ ベー ース スの の移 移行 行が が失 失敗 敗し した "
        );
        assert_eq!(
            index_text("迁移数据库失败"),
            " 迁移 移数 数据 据库 库失 失败 "
        );
        assert_eq!(
            index_text("Exifタグを表示 (v2)"),
            "Exif タグ グを を表 表示  (v2)"
        );
        assert_eq!(index_text("plain English stays"), "plain English stays");
        assert_eq!(index_text("猫"), " 猫 ");
    }

    #[test]
    fn owner_tokens_are_one_word_each() {
        let a = owner_token("ten_1", "usr_1");
        assert_eq!(a.len(), 26);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, owner_token("ten_1", "usr_2"));
        assert_ne!(owner_token("ten_1u", "sr_1"), owner_token("ten_1", "usr_1"));
        assert_eq!(
            owner_filter("t", "u"),
            format!("owner : \"{}\"", owner_token("t", "u"))
        );
    }

    #[test]
    fn query_terms_are_words_and_runs() {
        let t = terms("Deployed the データベース, again; deployed 失败");
        let words: Vec<&str> = t.iter().map(|t| t.word.as_str()).collect();
        assert_eq!(words, ["Deployed", "the", "データベース", "again", "失败"]);
        assert_eq!(t[2].tokens, ["デー", "ータ", "タベ", "ベー", "ース"]);
        assert_eq!(t[2].phrase(), "\"デー ータ タベ ベー ース\"");
        assert_eq!(t[4].phrase(), "\"失败\"");
        assert_eq!(terms("INV-2024-0042")[0].phrase(), "\"INV-2024-0042\"");
        assert_eq!(terms("say \"hi\"")[1].phrase(), "\"hi\"");
        assert!(terms(" ,. ").is_empty());
    }
}

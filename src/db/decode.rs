//! Decoding stored rows without silent fallbacks: a value this binary cannot read is an error
//! that names the table, the row and the column, never a default.

use rusqlite::Row;
use rusqlite::types::{FromSql, FromSqlError, Type};
use serde::de::DeserializeOwned;

/// A stored value that is not one this binary knows (an unknown state, policy or role).
pub fn unknown_value(what: &str, raw: &str) -> FromSqlError {
    FromSqlError::Other(format!("unknown {what} {raw:?}").into())
}

/// One row being decoded, with what names it in errors.
pub struct Decoded<'a, 'r> {
    row: &'a Row<'r>,
    table: &'static str,
    key: String,
}

impl<'a, 'r> Decoded<'a, 'r> {
    /// `key` is the column that identifies the row (its id).
    pub fn new(row: &'a Row<'r>, table: &'static str, key: usize) -> rusqlite::Result<Self> {
        let key = match row.get_ref(key)? {
            rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
            rusqlite::types::ValueRef::Integer(i) => i.to_string(),
            other => format!("{other:?}"),
        };
        Ok(Decoded { row, table, key })
    }

    fn corrupt(&self, idx: usize, problem: impl std::fmt::Display) -> rusqlite::Error {
        let column = self.row.as_ref().column_name(idx).unwrap_or("?");
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            Type::Null,
            format!(
                "{} row {}: column {column}: {problem}",
                self.table, self.key
            )
            .into(),
        )
    }

    pub fn get<T: FromSql>(&self, idx: usize) -> rusqlite::Result<T> {
        self.row.get(idx).map_err(|e| self.corrupt(idx, e))
    }

    /// A column holding JSON text.
    pub fn json<T: DeserializeOwned>(&self, idx: usize) -> rusqlite::Result<T> {
        let text: String = self.get(idx)?;
        serde_json::from_str(&text).map_err(|e| self.corrupt(idx, e))
    }

    /// A nullable column holding JSON text.
    pub fn json_opt<T: DeserializeOwned>(&self, idx: usize) -> rusqlite::Result<Option<T>> {
        let text: Option<String> = self.get(idx)?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| self.corrupt(idx, e)))
            .transpose()
    }

    /// A column decoded by `parse`, which names what it expected when it fails.
    pub fn parsed<T>(
        &self,
        idx: usize,
        what: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> rusqlite::Result<T> {
        let text: String = self.get(idx)?;
        parse(&text).ok_or_else(|| self.corrupt(idx, format!("unknown {what} {text:?}")))
    }
}

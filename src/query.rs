//! Query: the analysts' three questions, and how answers are printed.
//!
//! Reads from whichever store is configured; each question is one single-partition read
//! thanks to the table design. Output is an aligned table (default), CSV with a header row of
//! the column names, or a JSON array of objects. Values are given back exactly in CSV and JSON;
//! the table shows control characters escaped.

use serde::Serialize;

use crate::store::{ListenerAnswer, SessionAnswer, Store, StoreError, UserAnswer};

/// How answers are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a header.
    #[default]
    Table,
    /// CSV with a header row.
    Csv,
    /// A JSON array of objects.
    Json,
}

/// Something that prints as a row of named columns.
pub trait Tabular: Serialize {
    const COLUMNS: &'static [&'static str];
    fn cells(&self) -> Vec<String>;
}

impl Tabular for SessionAnswer {
    const COLUMNS: &'static [&'static str] = &["artist", "song", "length"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.artist.clone(),
            self.song.clone(),
            self.length.to_string(),
        ]
    }
}

impl Tabular for UserAnswer {
    const COLUMNS: &'static [&'static str] =
        &["iteminsession", "artist", "song", "firstname", "lastname"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.iteminsession.to_string(),
            self.artist.clone(),
            self.song.clone(),
            self.firstname.clone(),
            self.lastname.clone(),
        ]
    }
}

impl Tabular for ListenerAnswer {
    const COLUMNS: &'static [&'static str] = &["firstname", "lastname"];
    fn cells(&self) -> Vec<String> {
        vec![self.firstname.clone(), self.lastname.clone()]
    }
}

/// Renders rows in the chosen format.
pub fn render<T: Tabular>(rows: &[T], format: Format) -> String {
    match format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(rows).unwrap_or_else(|_| "[]".into());
            s.push('\n');
            s
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            let _ = w.write_record(T::COLUMNS);
            for r in rows {
                let _ = w.write_record(r.cells());
            }
            String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
        }
        Format::Table => {
            let header: Vec<String> = T::COLUMNS.iter().map(|c| c.to_string()).collect();
            let body: Vec<Vec<String>> = rows.iter().map(Tabular::cells).collect();
            render_table(&header, &body)
        }
    }
}

/// Aligned columns: header, a rule, the rows. This is the format read on a terminal, so
/// control characters in values are shown escaped (see `escape`); CSV and JSON keep them.
pub fn render_table(header: &[String], body: &[Vec<String>]) -> String {
    let shown = |cells: &[String]| -> Vec<String> {
        cells
            .iter()
            .map(|c| crate::escape::escape_str(c).into_owned())
            .collect()
    };
    let header = &shown(header)[..];
    let body: Vec<Vec<String>> = body.iter().map(|r| shown(r)).collect();
    let width = |i: usize| {
        body.iter()
            .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
            .chain(std::iter::once(header[i].chars().count()))
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let line = |cells: &[String]| {
        let mut s = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header);
    out.push_str(&line(
        &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>(),
    ));
    for r in &body {
        out.push_str(&line(r));
    }
    out
}

/// Question 1: the song at item N of session S.
pub async fn session(
    store: &Store,
    session_id: i32,
    item: i32,
    format: Format,
) -> Result<(String, usize), StoreError> {
    let rows = store.song_in_session(session_id, item).await?;
    Ok((render(&rows, format), rows.len()))
}

/// Question 2: what user U played in session S, in order.
pub async fn user(
    store: &Store,
    user_id: i32,
    session_id: i32,
    format: Format,
) -> Result<(String, usize), StoreError> {
    let rows = store.user_session(user_id, session_id).await?;
    Ok((render(&rows, format), rows.len()))
}

/// Question 3: who listened to song T.
pub async fn song(
    store: &Store,
    title: &str,
    format: Format,
) -> Result<(String, usize), StoreError> {
    let rows = store.listeners(title).await?;
    Ok((render(&rows, format), rows.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_agree_on_columns() {
        let rows = vec![UserAnswer {
            iteminsession: 0,
            artist: "Des'ree".into(),
            song: "You Gotta Be, Live".into(),
            firstname: "Kaylee".into(),
            lastname: "Summers".into(),
        }];
        assert_eq!(
            render(&rows, Format::Csv),
            "iteminsession,artist,song,firstname,lastname\n0,Des'ree,\"You Gotta Be, Live\",Kaylee,Summers\n"
        );
        assert_eq!(
            render(&rows, Format::Table),
            "iteminsession  artist   song                firstname  lastname\n\
             -------------  -------  ------------------  ---------  --------\n\
             0              Des'ree  You Gotta Be, Live  Kaylee     Summers\n"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&rows, Format::Json)).unwrap();
        assert_eq!(json[0]["firstname"], "Kaylee");
    }

    #[test]
    fn the_table_escapes_terminal_controls_and_csv_and_json_keep_them() {
        let rows = vec![ListenerAnswer {
            firstname: "A\u{1b}]0;owned\u{7}".into(),
            lastname: "B\0C".into(),
        }];
        assert_eq!(
            render(&rows, Format::Table),
            "firstname          lastname\n\
             -----------------  --------\n\
             A\\x1b]0;owned\\x07  B\\x00C\n"
        );
        assert_eq!(
            render(&rows, Format::Csv),
            "firstname,lastname\nA\u{1b}]0;owned\u{7},B\0C\n"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&rows, Format::Json)).unwrap();
        assert_eq!(json[0]["firstname"], "A\u{1b}]0;owned\u{7}");
        assert_eq!(json[0]["lastname"], "B\0C");
    }
}

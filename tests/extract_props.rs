//! Property tests of the extractor: whatever bytes a file holds, reading it never panics, and
//! every record is accounted for exactly once (a play, a skip or a reject).

use proptest::prelude::*;
use sparkify::extract::{ExtractOptions, Item, PlayReader};

const HEADER: &str = "artist,auth,firstName,gender,itemInSession,lastName,length,level,location,method,page,registration,sessionId,song,status,ts,userId";

fn read(bytes: &[u8], options: &ExtractOptions) -> Option<(u64, u64, u64, u64, usize)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.csv");
        std::fs::write(&path, bytes).unwrap();
        let mut reader = PlayReader::open(&path, options).await.ok()?;
        let mut items = 0;
        while let Some(item) = reader
            .next()
            .await
            .expect("a file that opened reads to the end")
        {
            if let Item::Reject(r) = &item {
                assert!(!r.reason.is_empty());
                assert!(r.line >= 2, "records start after the header");
            }
            items += 1;
        }
        let c = reader.counts();
        Some((c.rows, c.plays, c.skipped, c.rejected, items))
    })
}

fn small_options() -> ExtractOptions {
    ExtractOptions {
        max_record_bytes: 256,
        read_buffer_bytes: 4096,
        max_fields: 1000,
        keep_profile: true,
        ..ExtractOptions::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = read(&bytes, &small_options());
        let _ = read(&bytes, &ExtractOptions::default());
    }

    #[test]
    fn arbitrary_rows_under_a_good_header_are_all_accounted_for(
        rows in proptest::collection::vec(
            proptest::collection::vec(
                prop_oneof![
                    Just(String::new()),
                    Just("NextSong".to_string()),
                    Just("\"a, b\"".to_string()),
                    "[0-9]{1,12}",
                    "-?[0-9]{1,4}\\.[0-9]{1,3}",
                    "\\PC{0,12}",
                    Just("\"".to_string()),
                ],
                0..20,
            ),
            0..40,
        ),
        crlf in any::<bool>(),
    ) {
        let eol = if crlf { "\r\n" } else { "\n" };
        let mut text = format!("{HEADER}{eol}");
        for r in &rows {
            text.push_str(&r.join(","));
            text.push_str(eol);
        }
        let (total, plays, skipped, rejected, items) =
            read(text.as_bytes(), &small_options()).expect("a good header opens");
        prop_assert_eq!(total, plays + skipped + rejected);
        prop_assert_eq!(items as u64, plays + rejected);
    }
}

#[test]
fn a_file_that_is_one_endless_line_stays_within_the_bound() {
    // 8 MiB without a line break after the header: one record, rejected for its size, read
    // through a bounded buffer.
    let mut bytes = format!("{HEADER}\n").into_bytes();
    bytes.extend(std::iter::repeat_n(b'z', 8 << 20));
    let (total, plays, _, rejected, _) = read(&bytes, &small_options()).unwrap();
    assert_eq!((total, plays, rejected), (1, 0, 1));
}

//! Unit tests of the extractor on in-memory files.

use super::*;
use std::io::Write;

async fn read_all(bytes: &[u8], options: &ExtractOptions) -> Result<Vec<Item>, FileError> {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    let mut r = PlayReader::open(f.path(), options).await?;
    let mut items = Vec::new();
    while let Some(item) = r.next().await? {
        items.push(item);
    }
    Ok(items)
}

const HEADER: &str = "artist,auth,firstName,gender,itemInSession,lastName,length,level,location,method,page,registration,sessionId,song,status,ts,userId";

#[tokio::test]
async fn reads_a_real_row_with_quoted_comma_and_crlf() {
    let data = format!(
        "{HEADER}\r\nDes'ree,Logged In,Kaylee,F,1,Summers,246.30812,free,\"Phoenix-Mesa-Scottsdale, AZ\",PUT,NextSong,1.54034E+12,139,You Gotta Be,200,1.54111E+12,8\r\n"
    );
    let items = read_all(data.as_bytes(), &ExtractOptions::default())
        .await
        .unwrap();
    let [Item::Play(p)] = items.as_slice() else {
        panic!("{items:?}")
    };
    assert_eq!(p.artist, "Des'ree");
    assert_eq!(p.song, "You Gotta Be");
    assert_eq!(p.session_id, 139);
    assert_eq!(p.item_in_session, 1);
    assert_eq!(p.user_id, 8);
    assert_eq!(p.length, 246.30812);
}

#[tokio::test]
async fn oversize_record_is_rejected_and_reading_goes_on() {
    let options = ExtractOptions {
        max_record_bytes: 1024,
        read_buffer_bytes: 4096,
        max_fields: 1000,
        keep_profile: false,
        ..ExtractOptions::default()
    };
    let huge = "x".repeat(200_000);
    let data = format!(
        "{HEADER}\n{huge},Logged In,A,F,1,B,1.0,free,L,PUT,NextSong,1,2,S,200,1,3\nA,Logged In,A,F,2,B,1.0,free,L,PUT,NextSong,1,2,S,200,1,3\n"
    );
    let items = read_all(data.as_bytes(), &options).await.unwrap();
    assert_eq!(items.len(), 2, "{items:?}");
    let Item::Reject(r) = &items[0] else { panic!() };
    assert_eq!(r.line, 2);
    assert!(r.reason.contains("the bound is 1024 bytes"), "{}", r.reason);
    let Item::Play(p) = &items[1] else { panic!() };
    assert_eq!(p.item_in_session, 2);
}

#[tokio::test]
async fn a_header_over_the_record_bound_fails_the_file_with_its_start_escaped() {
    let options = ExtractOptions {
        max_record_bytes: 1024,
        read_buffer_bytes: 4096,
        max_fields: 1000,
        keep_profile: false,
        ..ExtractOptions::default()
    };
    // Longer than the bound, and (with no line break at all) than the guard lets through.
    // (xz: gzip and zstd are decompressed on the way.)
    for size in [3000, 100_000] {
        let mut data = b"\xfd7zXZ\x00".to_vec();
        data.resize(size, b'z');
        let Err(e) = read_all(&data, &options).await else {
            panic!("{size}: accepted")
        };
        let text = e.to_string();
        assert!(matches!(e, FileError::HeaderTooLong { .. }), "{text}");
        assert!(
            text.contains("the header is over 1024 bytes long (extract.max_record_bytes); it starts: \\xfd7zXZ\\x00zzz"),
            "{text}"
        );
        assert!(
            text.ends_with("… (looks like xz-compressed data; decompress it first)"),
            "{text}"
        );
        assert!(text.len() < 400, "{text}");
    }
}

#[test]
fn the_codec_comes_from_the_first_bytes() {
    assert_eq!(Codec::of_magic(b"\x1f\x8b\x08\x00"), Codec::Gzip);
    assert_eq!(Codec::of_magic(b"\x28\xb5\x2f\xfd"), Codec::Zstd);
    assert_eq!(Codec::of_magic(b"arti"), Codec::None);
    // Too short to be either.
    assert_eq!(Codec::of_magic(b"\x1f"), Codec::None);
    assert_eq!(Codec::of_magic(b"\x28\xb5\x2f"), Codec::None);
    assert_eq!(Codec::of_magic(b""), Codec::None);
    for c in [Codec::None, Codec::Gzip, Codec::Zstd] {
        assert_eq!(Codec::parse(c.as_str()), c);
    }
}

#[tokio::test]
async fn a_compressed_file_reads_like_the_plain_one_to_the_last_byte() {
    let data = format!(
        "{HEADER}\r\nA,Logged In,A,F,1,B,1.0,free,L,PUT,NextSong,1,2,S,200,1,3\r\nA,Logged In,A,F,x,B,1.0,free,L,PUT,NextSong,1,2,S,200,1,3"
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(data.as_bytes(), 1).unwrap();
    let plain = read_all(data.as_bytes(), &ExtractOptions::default())
        .await
        .unwrap();
    for stored in [gz, zst] {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&stored).unwrap();
        let mut r = PlayReader::open(f.path(), &ExtractOptions::default())
            .await
            .unwrap();
        let mut items = Vec::new();
        while let Some(item) = r.next().await.unwrap() {
            items.push(item);
        }
        assert_eq!(format!("{items:?}"), format!("{plain:?}"));
        assert_eq!(r.text_bytes(), data.len() as u64);
        assert_eq!(r.bytes_read(), stored.len() as u64);
        let content = r.content().expect("read to the end");
        assert_eq!(content.size, stored.len() as u64);
        assert_eq!(
            content.content_hash,
            blake3::hash(&stored).to_hex().as_str()
        );
    }
}

#[tokio::test]
async fn the_end_of_the_file_stays_the_end() {
    let data = format!("{HEADER}\nA,Logged In,A,F,1,B,1.0,free,L,PUT,NextSong,1,2,S,200,1,3\n");
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(data.as_bytes()).unwrap();
    let mut r = PlayReader::open(f.path(), &ExtractOptions::default())
        .await
        .unwrap();
    assert!(matches!(r.next().await, Ok(Some(Item::Play(_)))));
    for _ in 0..3 {
        assert!(matches!(r.next().await, Ok(None)));
    }
    assert_eq!(r.counts().plays, 1);
}

//! `fetch` from a local directory and over HTTP on 127.0.0.1 (a server started by the test).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;

use omniglot_data::synthetic::{self, Spec};
use omniglot_data::{Error, Fetched, Source, Subset, fetch, sha256_file};

const SPEC: Spec = Spec { alphabets: 1, characters_per_alphabet: 2 };

/// A source directory with both synthetic archives and, if asked, a matching SHA256SUMS.
fn source_dir(with_sums: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut sums = String::new();
    for subset in Subset::ALL {
        let p = synthetic::write_archive(dir.path(), subset, SPEC).unwrap();
        sums += &format!("{}  {}\n", sha256_file(&p).unwrap(), subset.archive_name());
    }
    if with_sums {
        std::fs::write(dir.path().join("SHA256SUMS"), sums).unwrap();
    }
    dir
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn local_directory_then_already_present() {
    let src = source_dir(true);
    let data = tempfile::tempdir().unwrap();
    let source = Source::parse(src.path().to_str().unwrap());
    let mut events = 0;
    let got = fetch(&source, data.path(), &Subset::ALL, &mut |_| events += 1).unwrap();
    assert!(matches!(got[0], Fetched::Transferred(_)) && matches!(got[1], Fetched::Transferred(_)));
    assert!(events >= 6, "start, advance and finish for each archive");
    assert_eq!(files_in(data.path()), ["images_background.zip", "images_evaluation.zip"]);
    let again = fetch(&source, data.path(), &Subset::ALL, &mut |_| panic!("no transfer expected")).unwrap();
    assert!(matches!(again[0], Fetched::AlreadyPresent(_)) && matches!(again[1], Fetched::AlreadyPresent(_)));
}

#[test]
fn local_checksum_mismatch_leaves_nothing() {
    let src = source_dir(false);
    std::fs::write(src.path().join("SHA256SUMS"), format!("{}  images_background.zip\n", "ab".repeat(32))).unwrap();
    let data = tempfile::tempdir().unwrap();
    let err = fetch(&Source::Dir(src.path().into()), data.path(), &[Subset::Background], &mut |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::ChecksumMismatch { algorithm: "sha256", .. }), "{msg}");
    assert!(msg.contains("images_background.zip") && msg.contains(&"ab".repeat(32)), "{msg}");
    assert!(files_in(data.path()).is_empty(), "no .part and no archive left: {:?}", files_in(data.path()));
}

#[test]
fn without_sha256sums_the_canonical_md5_applies() {
    let src = source_dir(false);
    let data = tempfile::tempdir().unwrap();
    let err = fetch(&Source::Dir(src.path().into()), data.path(), &[Subset::Evaluation], &mut |_| {}).unwrap_err();
    assert!(
        matches!(&err, Error::ChecksumMismatch { algorithm: "md5", expected, .. } if expected == "6b91aef0f799c5bb55b94e3f2daec811"),
        "{err}"
    );
}

#[test]
fn bad_existing_archive_is_replaced() {
    let src = source_dir(true);
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("images_background.zip"), b"half a download").unwrap();
    let got = fetch(&Source::Dir(src.path().into()), data.path(), &[Subset::Background], &mut |_| {}).unwrap();
    assert!(matches!(got[0], Fetched::Transferred(_)));
    assert_eq!(
        sha256_file(&data.path().join("images_background.zip")).unwrap(),
        sha256_file(&src.path().join("images_background.zip")).unwrap()
    );
}

#[test]
fn missing_source_directory_is_named() {
    let data = tempfile::tempdir().unwrap();
    let err = fetch(&Source::parse("/no/such/omniglot"), data.path(), &Subset::ALL, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("/no/such/omniglot"), "{err}");
}

/// How the test server answers a request for a path.
#[derive(Clone)]
enum Reply {
    Ok(Vec<u8>),
    NotFound,
    /// Announce the full length, send only half, close.
    Truncated(Vec<u8>),
}

/// Serve `routes` on 127.0.0.1 for at most `max_requests` connections; returns the base URL.
fn serve(routes: Vec<(&'static str, Reply)>, max_requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max_requests) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap() == 0 || header == "\r\n" {
                    break;
                }
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
            let reply = routes.iter().find(|(p, _)| *p == path).map(|(_, r)| r.clone()).unwrap_or(Reply::NotFound);
            let _ = match reply {
                Reply::Ok(body) => {
                    let head =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                    stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body))
                }
                Reply::NotFound => {
                    stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                }
                Reply::Truncated(body) => {
                    let head =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                    stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body[..body.len() / 2]))
                }
            };
        }
    });
    base
}

fn archive_bytes(src: &Path, subset: Subset) -> Vec<u8> {
    std::fs::read(src.join(subset.archive_name())).unwrap()
}

#[test]
fn http_success_with_sha256sums() {
    let src = source_dir(true);
    let routes = vec![
        ("/mirror/SHA256SUMS", Reply::Ok(std::fs::read(src.path().join("SHA256SUMS")).unwrap())),
        ("/mirror/images_background.zip", Reply::Ok(archive_bytes(src.path(), Subset::Background))),
        ("/mirror/images_evaluation.zip", Reply::Ok(archive_bytes(src.path(), Subset::Evaluation))),
    ];
    let base = serve(routes, 3);
    let data = tempfile::tempdir().unwrap();
    let mut done = 0;
    let got = fetch(&Source::parse(&format!("{base}/mirror/")), data.path(), &Subset::ALL, &mut |p| {
        if let omniglot_data::Progress::Advance { done: d } = p {
            done = d;
        }
    })
    .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(done, archive_bytes(src.path(), Subset::Evaluation).len() as u64);
    assert_eq!(
        std::fs::read(data.path().join("images_background.zip")).unwrap(),
        archive_bytes(src.path(), Subset::Background)
    );
    assert_eq!(files_in(data.path()), ["images_background.zip", "images_evaluation.zip"]);
}

#[test]
fn http_404_names_the_url() {
    let src = source_dir(true);
    let routes = vec![("/SHA256SUMS", Reply::Ok(std::fs::read(src.path().join("SHA256SUMS")).unwrap()))];
    let base = serve(routes, 2);
    let data = tempfile::tempdir().unwrap();
    let err = fetch(&Source::parse(&base), data.path(), &[Subset::Background], &mut |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::HttpStatus { status: 404, .. }), "{msg}");
    assert!(msg.contains(&format!("{base}/images_background.zip")), "{msg}");
    assert!(files_in(data.path()).is_empty(), "{:?}", files_in(data.path()));
}

#[test]
fn http_truncated_body_leaves_nothing() {
    let src = source_dir(true);
    let routes = vec![
        ("/SHA256SUMS", Reply::Ok(std::fs::read(src.path().join("SHA256SUMS")).unwrap())),
        ("/images_background.zip", Reply::Truncated(archive_bytes(src.path(), Subset::Background))),
    ];
    let base = serve(routes, 2);
    let data = tempfile::tempdir().unwrap();
    let err = fetch(&Source::parse(&base), data.path(), &[Subset::Background], &mut |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("images_background.zip"), "{msg}");
    assert!(matches!(err, Error::Truncated { .. } | Error::Io { .. }), "{msg}");
    assert!(files_in(data.path()).is_empty(), "{:?}", files_in(data.path()));
}

#[test]
fn http_checksum_mismatch_names_the_url() {
    let src = source_dir(true);
    let routes = vec![
        ("/SHA256SUMS", Reply::Ok(std::fs::read(src.path().join("SHA256SUMS")).unwrap())),
        // The evaluation archive served under the background name.
        ("/images_background.zip", Reply::Ok(archive_bytes(src.path(), Subset::Evaluation))),
    ];
    let base = serve(routes, 2);
    let data = tempfile::tempdir().unwrap();
    let err = fetch(&Source::parse(&base), data.path(), &[Subset::Background], &mut |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{msg}");
    assert!(msg.contains(&format!("{base}/images_background.zip")), "{msg}");
    assert!(files_in(data.path()).is_empty());
}

#[test]
fn unreachable_url_says_how_to_use_source() {
    // Bind then drop a listener: the port is closed, the connection is refused.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let data = tempfile::tempdir().unwrap();
    let err =
        fetch(&Source::parse(&format!("http://127.0.0.1:{port}")), data.path(), &Subset::ALL, &mut |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Unreachable { .. }), "{msg}");
    assert!(msg.contains("--source DIR") && msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
}

#[test]
fn bad_locations_get_one_actionable_sentence_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source_dir(true);
    let source = Source::parse(src.path().to_str().unwrap());
    // A data "directory" that is a file.
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let err = fetch(&source, &file, &Subset::ALL, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("is a file") && err.contains("OMNIGLOT_DATA_DIR"), "{err}");
    // A source folder that does not exist: named, with what it should hold; no empty data
    // folder is left behind.
    let data = tmp.path().join("new-data");
    let missing = Source::parse(tmp.path().join("nowhere").to_str().unwrap());
    let err = fetch(&missing, &data, &Subset::ALL, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("nowhere") && err.contains("images_background.zip"), "{err}");
    assert!(!err.contains("not a directory: not a directory"), "{err}");
    assert!(!data.exists(), "fetch left {} behind", data.display());
    // An OS error appears once in the error chain, not in the message and again as its source.
    let under_file = file.join("sub");
    let e = fetch(&source, &under_file, &Subset::ALL, &mut |_| {}).unwrap_err();
    let chain = format!("{e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default());
    let os = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
    assert!(!os.is_empty() && chain.matches(&os).count() == 1, "{chain}");
}

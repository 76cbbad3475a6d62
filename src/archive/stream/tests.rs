use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;
use crate::archive::{Building, MANIFEST, Manifest, Seals, digest};

/// Small chunks, so that small files span several.
const CHUNK: u64 = 1 << 20;

/// A committed checkpoint in `dir`: a page image of 2½ chunks (a heap of
/// repeated data with some noise), a few small files, and an empty one.
fn checkpoint(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let pages: Vec<u8> = (0..(CHUNK * 5 / 2) as usize)
        .map(|i| if i % 4096 < 8 { (i / 4096) as u8 } else { b'x' })
        .collect();
    files.insert("0123-counter/checkpoint/pages-1.img".to_owned(), pages);
    files.insert("0123-counter/config.dump".to_owned(), b"{\"id\":\"0123\"}".to_vec());
    files.insert("0123-counter/deleted.files".to_owned(), Vec::new());
    files.insert("pod.options".to_owned(), b"{\"version\":1}".to_vec());
    files.insert("pod.dump".to_owned(), b"{}".to_vec());
    let building = Building::begin(dir);
    for (name, bytes) in &files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let manifest = manifest_of(dir);
    building.commit(&serde_json::to_vec(&manifest).unwrap(), false).unwrap();
    files
}

fn manifest_of(dir: &Path) -> Manifest {
    let mut manifest = Manifest::build(dir, "criu-runc", "4.1.1", "pod").unwrap();
    let mut listed = digest::list(dir).unwrap();
    listed.retain(|f| f.name != MANIFEST);
    for (file, sha256) in listed.iter().zip(digest::hash_files(&listed, CHUNK).unwrap()) {
        manifest.files.get_mut(&file.name).unwrap().sha256 = sha256;
    }
    manifest.chunk_size = CHUNK;
    manifest
}

fn exported(dir: &Path, options: &ExportOptions) -> Vec<u8> {
    let mut out = Vec::new();
    export(dir, &mut out, options).unwrap();
    out
}

fn plain() -> ExportOptions {
    ExportOptions {
        threads: 0,
        ..ExportOptions::default()
    }
}

/// A place to import into, inside a parent that must hold nothing else
/// afterwards.
struct Landing {
    parent: tempfile::TempDir,
}

impl Landing {
    fn new() -> Self {
        Self {
            parent: tempfile::tempdir().unwrap(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.parent.path().join("in")
    }

    fn import(&self, stream: &[u8], identities: Option<&Identities>) -> Result<Imported, StreamError> {
        let options = ImportOptions {
            identities,
            seals: None,
        };
        import(stream, &self.dir(), &options)
    }

    /// After a refusal: the directory the import made is gone, and nothing
    /// was written beside it.
    fn assert_untouched(&self) {
        let left: Vec<_> = std::fs::read_dir(self.parent.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    /// Imports `stream` into a new landing: it must be refused with an error
    /// that says `words`, and leave nothing behind.
    fn assert_refused(stream: &[u8], identities: Option<&Identities>, case: &str, words: &str) {
        let landing = Landing::new();
        let err = landing.import(stream, identities).expect_err(case).to_string();
        assert!(err.contains(words), "{case}: {err}");
        landing.assert_untouched();
    }

    fn assert_holds(&self, files: &BTreeMap<String, Vec<u8>>) {
        let dir = self.dir();
        for (name, bytes) in files {
            assert_eq!(&std::fs::read(dir.join(name)).unwrap(), bytes, "{name}");
        }
        let manifest: Manifest = serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).unwrap()).unwrap();
        manifest.verify(&dir).unwrap();
        assert_eq!(manifest.files.len(), files.len());
    }
}

#[test]
fn a_checkpoint_goes_through_export_and_import_whole_and_private() {
    let source = tempfile::tempdir().unwrap();
    let files = checkpoint(source.path());
    let mut out = Vec::new();
    let summary = export(source.path(), &mut out, &ExportOptions::default()).unwrap();
    assert_eq!(summary.files, files.len() + 1);
    assert_eq!(summary.bytes_out, out.len() as u64);
    assert!(
        summary.bytes_out * 10 < summary.bytes_in,
        "a heap of repeated data compresses: {summary:?}"
    );
    assert_eq!(
        exported(source.path(), &plain()),
        exported(source.path(), &plain()),
        "the same checkpoint is the same stream"
    );

    let landing = Landing::new();
    let imported = landing.import(&out, None).unwrap();
    assert_eq!(imported.files, summary.files);
    assert_eq!(imported.bytes, summary.bytes_in);
    landing.assert_holds(&files);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let dir = landing.dir();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("0123-counter/checkpoint")), 0o700);
    assert_eq!(mode(&dir.join("0123-counter/checkpoint/pages-1.img")), 0o600);
    assert_eq!(mode(&dir.join(MANIFEST)), 0o600);
    assert_eq!(
        std::fs::read(dir.join(MANIFEST)).unwrap(),
        std::fs::read(source.path().join(MANIFEST)).unwrap(),
        "the manifest's very bytes, so that seals and signatures of it hold"
    );

    // An existing empty directory keeps its inode and mode.
    let landing = Landing::new();
    std::fs::create_dir(landing.dir()).unwrap();
    std::fs::set_permissions(landing.dir(), std::fs::Permissions::from_mode(0o750)).unwrap();
    landing.import(&out, None).unwrap();
    landing.assert_holds(&files);
    assert_eq!(mode(&landing.dir()), 0o750);
}

#[test]
fn an_import_is_sealed_so_the_first_restore_need_not_hash_it() {
    let (stream, _state, seals) = exported_with_seals();
    let landing = Landing::new();
    let imported = import(&stream[..], &landing.dir(), &sealing(&seals)).unwrap();
    assert!(imported.sealed);
    assert_sealed(&seals, &landing.dir());
}

/// A plain export of a checkpoint, and the seals of a state directory
/// (kept as long as the returned guard) to import it with.
fn exported_with_seals() -> (Vec<u8>, tempfile::TempDir, Seals) {
    let source = tempfile::tempdir().unwrap();
    checkpoint(source.path());
    let stream = exported(source.path(), &plain());
    let state = tempfile::tempdir().unwrap();
    let seals = Seals::open(state.path()).unwrap();
    (stream, state, seals)
}

fn sealing(seals: &Seals) -> ImportOptions<'_> {
    ImportOptions {
        identities: None,
        seals: Some(seals),
    }
}

/// The seal of the checkpoint in `dir` holds for its manifest.
fn assert_sealed(seals: &Seals, dir: &Path) {
    let manifest = std::fs::read(dir.join(MANIFEST)).unwrap();
    let snapshot = seals.snapshot(dir).unwrap().unwrap();
    assert!(seals.unchanged(&snapshot, &manifest).is_some());
}

#[test]
fn an_encrypted_export_opens_only_with_its_key() {
    let source = tempfile::tempdir().unwrap();
    let files = checkpoint(source.path());
    let keys = tempfile::tempdir().unwrap();
    let (identity, recipient) = generate_identity();
    let (other, _) = generate_identity();
    std::fs::write(keys.path().join("mine"), identity).unwrap();
    std::fs::write(keys.path().join("other"), other).unwrap();
    let mine = Identities::from_file(&keys.path().join("mine")).unwrap();
    let theirs = Identities::from_file(&keys.path().join("other")).unwrap();

    let mut recipients = Recipients::default();
    recipients.add(&recipient).unwrap();
    let stream = exported(source.path(), &ExportOptions { recipients, ..plain() });
    assert!(stream.starts_with(b"age-encryption.org/v1\n"));

    let landing = Landing::new();
    landing.import(&stream, Some(&mine)).unwrap();
    landing.assert_holds(&files);

    let cases: [(&str, Vec<u8>, Option<&Identities>, &str); 5] = [
        ("another key", stream.clone(), Some(&theirs), "no key in"),
        ("no key", stream.clone(), None, "give the identity file"),
        (
            "a plain stream where one was expected encrypted",
            exported(source.path(), &plain()),
            Some(&mine),
            "not encrypted",
        ),
        (
            "a byte changed in transit",
            flipped(&stream, stream.len() / 2),
            Some(&mine),
            "",
        ),
        (
            "the last chunk cut off",
            stream[..stream.len() - 100].to_vec(),
            Some(&mine),
            "",
        ),
    ];
    for (case, bytes, identities, words) in cases {
        Landing::assert_refused(&bytes, identities, case, words);
    }
}

fn flipped(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    bytes[at] ^= 0x40;
    bytes
}

#[test]
fn recipients_and_identities_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut recipients = Recipients::default();
    let err = recipients.add("age1notakey").unwrap_err();
    assert!(err.to_string().contains("age1notakey"), "{err}");
    let (identity, recipient) = generate_identity();
    std::fs::write(dir.path().join("recipients"), format!("# ops team\n\n{recipient}\n")).unwrap();
    recipients.add(dir.path().join("recipients").to_str().unwrap()).unwrap();
    assert!(!recipients.is_empty());

    let secret = identity.lines().find(|l| l.starts_with("AGE-SECRET-KEY-")).unwrap();
    std::fs::write(dir.path().join("broken"), format!("{}x\n", &secret[..secret.len() - 1])).unwrap();
    let err = Identities::from_file(&dir.path().join("broken"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("line 1"), "{err}");
    assert!(!err.contains(&secret[15..]), "a key never appears in a message: {err}");
    std::fs::write(dir.path().join("empty"), "# nothing\n").unwrap();
    assert!(Identities::from_file(&dir.path().join("empty")).is_err());
}

#[test]
fn only_an_empty_or_absent_directory_is_imported_into() {
    let source = tempfile::tempdir().unwrap();
    checkpoint(source.path());
    let stream = exported(source.path(), &plain());
    let landing = Landing::new();
    std::fs::create_dir(landing.dir()).unwrap();
    std::fs::write(landing.dir().join("keep"), b"mine").unwrap();
    let err = landing.import(&stream, None).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(std::fs::read(landing.dir().join("keep")).unwrap(), b"mine");
    std::fs::remove_dir_all(landing.dir()).unwrap();
    std::fs::write(landing.dir(), b"a file").unwrap();
    let err = landing.import(&stream, None).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn an_uncommitted_or_changed_checkpoint_is_not_exported() {
    let source = tempfile::tempdir().unwrap();
    checkpoint(source.path());
    std::fs::write(source.path().join("pod.dump"), b"{} ").unwrap();
    let err = export(source.path(), &mut Vec::new(), &plain()).unwrap_err();
    assert!(err.to_string().contains("pod.dump"), "{err}");
    std::fs::remove_file(source.path().join(MANIFEST)).unwrap();
    let err = export(source.path(), &mut Vec::new(), &plain()).unwrap_err();
    assert!(err.to_string().contains("no whole checkpoint"), "{err}");
}

/// One tar entry, written header field by header field, so that a test can
/// make every entry export never writes.
struct Raw {
    name: Vec<u8>,
    kind: tar::EntryType,
    data: Vec<u8>,
    /// The size the header claims, when it is not the data's.
    claimed: Option<u64>,
    link: Option<&'static str>,
}

fn raw(name: &str, data: &[u8]) -> Raw {
    Raw {
        name: name.as_bytes().to_vec(),
        kind: tar::EntryType::Regular,
        data: data.to_vec(),
        claimed: None,
        link: None,
    }
}

fn tar_of(entries: &[Raw]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..entry.name.len()].copy_from_slice(&entry.name);
        header.set_entry_type(entry.kind);
        header.set_size(entry.claimed.unwrap_or(entry.data.len() as u64));
        header.set_mode(0o600);
        if let Some(link) = entry.link {
            header.set_link_name(link).unwrap();
        }
        header.set_cksum();
        builder.append(&header, &entry.data[..]).unwrap();
    }
    builder.into_inner().unwrap()
}

fn zstd_of(tar: &[u8]) -> Vec<u8> {
    zstd::encode_all(tar, 1).unwrap()
}

/// The entries export writes for the checkpoint in `dir`, manifest first.
fn entries_of(dir: &Path) -> Vec<Raw> {
    let manifest = std::fs::read(dir.join(MANIFEST)).unwrap();
    let mut entries = vec![raw(MANIFEST, &manifest)];
    for file in digest::list(dir).unwrap().into_iter().filter(|f| f.name != MANIFEST) {
        entries.push(raw(&file.name, &std::fs::read(&file.path).unwrap()));
    }
    entries
}

#[test]
fn hostile_streams_are_refused_naming_the_entry_and_leave_nothing() {
    let source = tempfile::tempdir().unwrap();
    checkpoint(source.path());
    let good = entries_of(source.path());
    assert!(
        Landing::new().import(&zstd_of(&tar_of(&good)), None).is_ok(),
        "the hand-made stream of the checkpoint is itself fine"
    );
    let with = |extra: Raw| {
        let mut entries = entries_of(source.path());
        entries.insert(2, extra);
        entries
    };
    let changed = |f: &dyn Fn(&mut Vec<Raw>)| {
        let mut entries = entries_of(source.path());
        f(&mut entries);
        entries
    };
    let of_kind = |name: &str, kind: tar::EntryType, link: Option<&'static str>| Raw {
        kind,
        link,
        ..raw(name, b"")
    };
    let mut escaping_manifest = manifest_of(source.path());
    let entry = escaping_manifest.files["pod.dump"].clone();
    escaping_manifest.files.insert("../escape".into(), entry);
    let escaping_manifest = serde_json::to_vec(&escaping_manifest).unwrap();

    use tar::EntryType as T;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a symbolic link",
            zstd_of(&tar_of(&with(of_kind("pod.dump", T::Symlink, Some("/etc/shadow"))))),
            "pod.dump: is a symbolic link",
        ),
        (
            "a hard link",
            zstd_of(&tar_of(&with(of_kind("pod.dump", T::Link, Some("/etc/shadow"))))),
            "pod.dump: is a hard link",
        ),
        (
            "a device node",
            zstd_of(&tar_of(&with(of_kind("dev", T::Char, None)))),
            "dev: is a device node",
        ),
        (
            "a FIFO",
            zstd_of(&tar_of(&with(of_kind("fifo", T::Fifo, None)))),
            "fifo: is a FIFO",
        ),
        (
            "a directory",
            zstd_of(&tar_of(&with(of_kind("0123-counter", T::Directory, None)))),
            "0123-counter: is a directory entry",
        ),
        (
            "a path with ..",
            zstd_of(&tar_of(&with(raw("0123-counter/../../escape", b"x")))),
            "0123-counter/../../escape: leaves the directory",
        ),
        (
            "an absolute path",
            zstd_of(&tar_of(&with(raw("/tmp/escape", b"x")))),
            "/tmp/escape: leaves the directory",
        ),
        (
            "a file not in the manifest",
            zstd_of(&tar_of(&with(raw("0123-counter/extra", b"x")))),
            "0123-counter/extra: is not in the manifest",
        ),
        (
            "a file twice",
            zstd_of(&tar_of(&with(raw("pod.dump", b"{}")))),
            "pod.dump: comes twice",
        ),
        (
            "another size",
            zstd_of(&tar_of(&changed(&|e| e.last_mut().unwrap().data.push(b' ')))),
            "pod.options: is 14 bytes in the stream, 13 in the manifest",
        ),
        (
            "a changed byte in the second chunk",
            zstd_of(&tar_of(&changed(&|e| e[1].data[(CHUNK + 5) as usize] ^= 1))),
            "0123-counter/checkpoint/pages-1.img: bytes 1048576..2097152 do not match",
        ),
        (
            "a changed byte in the short last chunk",
            zstd_of(&tar_of(&changed(&|e| *e[1].data.last_mut().unwrap() ^= 1))),
            "bytes 2097152..2621440 do not match",
        ),
        (
            "the manifest not first",
            zstd_of(&tar_of(&changed(&|e| e.swap(0, 1)))),
            "must begin with manifest.json",
        ),
        (
            "a manifest naming a path outside",
            zstd_of(&tar_of(&changed(&|e| e[0].data = escaping_manifest.clone()))),
            "leaves its directory",
        ),
        (
            "a manifest that is not one",
            zstd_of(&tar_of(&changed(&|e| e[0].data = b"[]".to_vec()))),
            "manifest.json: not a manifest",
        ),
        ("an empty tar stream", zstd_of(&tar_of(&[])), "no manifest"),
        ("no stream at all", Vec::new(), "empty"),
        (
            "the last file missing",
            zstd_of(&tar_of(&changed(&|e| {
                e.pop();
            }))),
            "pod.options, listed in the manifest, never came",
        ),
        (
            "a file cut short",
            {
                let tar = tar_of(&good);
                zstd_of(&tar[..512 * 5 + 1000])
            },
            "stops after",
        ),
        (
            "the zstd frame cut short",
            {
                let stream = zstd_of(&tar_of(&good));
                stream[..stream.len() - 3].to_vec()
            },
            "ends early",
        ),
        (
            "data after the end",
            {
                let mut tar = tar_of(&good);
                tar.extend_from_slice(b"more");
                zstd_of(&tar)
            },
            "not part of the checkpoint",
        ),
        (
            "not zstd",
            b"PK\x03\x04 a zip file".to_vec(),
            "neither an age nor a zstd stream",
        ),
    ];
    for (case, stream, words) in cases {
        Landing::assert_refused(&stream, None, case, words);
    }
}

#[test]
fn a_destination_without_room_is_refused_before_anything_is_written() {
    let source = tempfile::tempdir().unwrap();
    checkpoint(source.path());
    let mut entries = entries_of(source.path());
    let mut manifest = manifest_of(source.path());
    // 128 TiB, in 1 GiB chunks: a manifest of a few MiB.
    let huge = 1u64 << 47;
    manifest.chunk_size = 1 << 30;
    let page = manifest.files.get_mut("0123-counter/checkpoint/pages-1.img").unwrap();
    page.size = huge;
    page.sha256 = vec!["0".repeat(64); digest::chunk_count(huge, 1 << 30)];
    entries[0].data = serde_json::to_vec(&manifest).unwrap();
    let landing = Landing::new();
    let err = landing
        .import(&zstd_of(&tar_of(&entries)), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("MiB free; the checkpoint needs"), "{err}");
    landing.assert_untouched();
}

/// A stream of `entries`, each given as its raw header and data.
fn headers_of(entries: &[(tar::Header, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (header, data) in entries {
        builder.append(header, &data[..]).unwrap();
    }
    zstd_of(&builder.into_inner().unwrap())
}

fn header(kind: tar::EntryType, name: &[u8], size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(0o600);
    header.set_cksum();
    header
}

#[test]
fn extension_headers_cannot_make_import_read_without_bound() {
    use tar::EntryType as T;
    let source = tempfile::tempdir().unwrap();
    checkpoint(source.path());
    let manifest = std::fs::read(source.path().join(MANIFEST)).unwrap();
    let first = |kind, size| {
        headers_of(&[
            (header(kind, b"././@LongLink", size), Vec::new()),
            (
                header(T::Regular, MANIFEST.as_bytes(), manifest.len() as u64),
                manifest.clone(),
            ),
        ])
    };
    let cases = [
        (
            "a long name claiming 1 TiB",
            first(T::GNULongName, 1 << 40),
            "is not a name export writes",
        ),
        (
            "a pax header claiming 1 TiB",
            first(T::XHeader, 1 << 40),
            "a pax header",
        ),
        ("a global pax header", first(T::XGlobalHeader, 10), "a pax header"),
        ("a long link name", first(T::GNULongLink, 10), "long link"),
        ("a sparse file", first(T::GNUSparse, 10), "a sparse file"),
        (
            "a name that is not UTF-8",
            headers_of(&[(header(T::Regular, b"pod\xff", 1), b"x".to_vec())]),
            "is not UTF-8",
        ),
    ];
    for (case, stream, words) in cases {
        Landing::assert_refused(&stream, None, case, words);
    }

    // A name longer than a tar header holds, as export writes it.
    let long = format!("{}/pages-1.img", "d".repeat(150));
    let dir = tempfile::tempdir().unwrap();
    let building = Building::begin(dir.path());
    std::fs::create_dir(dir.path().join("d".repeat(150))).unwrap();
    std::fs::write(dir.path().join(&long), b"pages").unwrap();
    let built = manifest_of(dir.path());
    building.commit(&serde_json::to_vec(&built).unwrap(), false).unwrap();
    let landing = Landing::new();
    landing.import(&exported(dir.path(), &plain()), None).unwrap();
    assert_eq!(std::fs::read(landing.dir().join(&long)).unwrap(), b"pages");
}

#[test]
fn manifests_that_would_exhaust_the_cleanup_or_shadow_the_manifest_are_refused() {
    let source = tempfile::tempdir().unwrap();
    checkpoint(source.path());
    let good = manifest_of(source.path());
    let entry = good.files["pod.dump"].clone();
    for (name, words) in [
        (format!("{}f", "a/".repeat(20)), "deeper than any checkpoint"),
        ("manifest.json/x".to_owned(), "the manifest's own name"),
        (".manifest.json.partial/x".to_owned(), "the manifest's own name"),
    ] {
        let mut manifest = good.clone();
        manifest.files.insert(name.clone(), entry.clone());
        let mut entries = entries_of(source.path());
        entries[0].data = serde_json::to_vec(&manifest).unwrap();
        Landing::assert_refused(&zstd_of(&tar_of(&entries)), None, &name, words);
    }
}

#[test]
fn an_age_header_without_end_is_refused_early() {
    let keys = tempfile::tempdir().unwrap();
    let (identity, _) = generate_identity();
    std::fs::write(keys.path().join("key"), identity).unwrap();
    let identities = Identities::from_file(&keys.path().join("key")).unwrap();
    let mut stream = b"age-encryption.org/v1\n-> X25519 AAAA\n".to_vec();
    for _ in 0..2000 {
        stream.extend_from_slice(&[b'A'; 64]);
        stream.push(b'\n');
    }
    let landing = Landing::new();
    let err = landing.import(&stream, Some(&identities)).unwrap_err().to_string();
    assert!(err.contains("larger than 64 KiB"), "{err}");
    landing.assert_untouched();

    let armored = b"-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\n".to_vec();
    let err = landing.import(&armored, Some(&identities)).unwrap_err().to_string();
    assert!(err.contains("armored"), "{err}");
}

/// Import runs as root with names the sender chose: a directory another
/// user could change is refused, whoever owns the stream.
#[test]
fn a_destination_others_could_change_is_refused() {
    let source = tempfile::tempdir().unwrap();
    checkpoint(source.path());
    let stream = exported(source.path(), &plain());
    let landing = Landing::new();
    std::fs::create_dir(landing.dir()).unwrap();
    std::fs::set_permissions(landing.dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = landing.import(&stream, None).unwrap_err().to_string();
    assert!(err.contains("another user could redirect"), "{err}");
    std::fs::set_permissions(landing.parent.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::remove_dir(landing.dir()).unwrap();
    let err = landing.import(&stream, None).unwrap_err().to_string();
    assert!(
        err.contains("another user could redirect"),
        "a parent others may rename in: {err}"
    );
    landing.assert_untouched();
    // Sticky, as /tmp is: others cannot rename what is not theirs.
    std::fs::set_permissions(landing.parent.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    landing.import(&stream, None).unwrap();

    // A private directory, but another user's.
    if nix::unistd::geteuid().is_root() {
        let landing = Landing::new();
        std::fs::create_dir(landing.dir()).unwrap();
        std::os::unix::fs::chown(landing.dir(), Some(65534), Some(65534)).unwrap();
        let err = landing.import(&stream, None).unwrap_err().to_string();
        assert!(err.contains("owned by uid 65534"), "{err}");
        assert_eq!(std::fs::read_dir(landing.dir()).unwrap().count(), 0);
    }
}

#[test]
fn the_seal_is_found_by_the_canonical_path_whatever_path_was_given() {
    let (stream, _state, seals) = exported_with_seals();
    let landing = Landing::new();
    std::fs::create_dir(landing.dir()).unwrap();
    let given = PathBuf::from(format!("{}/../in/", landing.dir().display()));
    let imported = import(&stream[..], &given, &sealing(&seals)).unwrap();
    let canonical = std::fs::canonicalize(landing.dir()).unwrap();
    assert_eq!(imported.dir, canonical);
    assert_sealed(&seals, &canonical);
}

/// How a stream is spoilt.
#[derive(Clone, Debug)]
enum Spoil {
    Truncate(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, Vec<u8>),
    Remove(prop::sample::Index, usize),
}

impl Spoil {
    fn apply(&self, bytes: &mut Vec<u8>) {
        match self {
            Spoil::Truncate(at) => bytes.truncate(at.index(bytes.len())),
            Spoil::Flip(at, mask) => {
                let at = at.index(bytes.len());
                bytes[at] ^= mask.max(&1);
            }
            Spoil::Insert(at, more) => {
                let at = at.index(bytes.len());
                bytes.splice(at..at, more.iter().copied());
            }
            Spoil::Remove(at, n) => {
                let at = at.index(bytes.len());
                let end = (at + n).min(bytes.len());
                bytes.drain(at..end);
            }
        }
    }
}

fn spoil() -> impl Strategy<Value = Spoil> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Spoil::Truncate),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, m)| Spoil::Flip(i, m)),
        (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..600))
            .prop_map(|(i, b)| Spoil::Insert(i, b)),
        (any::<prop::sample::Index>(), 1usize..2000).prop_map(|(i, n)| Spoil::Remove(i, n)),
    ]
}

/// Which layer of the stream is spoilt: the tar inside (then compressed
/// as export would), the compressed stream, or the encrypted one.
#[derive(Clone, Copy, Debug)]
enum Layer {
    Tar,
    Zstd,
    Age,
}

struct Fixture {
    _source: tempfile::TempDir,
    _keys: tempfile::TempDir,
    files: BTreeMap<String, Vec<u8>>,
    tar: Vec<u8>,
    zstd: Vec<u8>,
    age: Vec<u8>,
    identities: Identities,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let source = tempfile::tempdir().unwrap();
        let files = checkpoint(source.path());
        let keys = tempfile::tempdir().unwrap();
        let (identity, recipient) = generate_identity();
        std::fs::write(keys.path().join("key"), identity).unwrap();
        let mut recipients = Recipients::default();
        recipients.add(&recipient).unwrap();
        let age = exported(source.path(), &ExportOptions { recipients, ..plain() });
        let zstd = exported(source.path(), &plain());
        Fixture {
            tar: zstd::decode_all(&zstd[..]).unwrap(),
            zstd,
            age,
            files,
            identities: Identities::from_file(&keys.path().join("key")).unwrap(),
            _source: source,
            _keys: keys,
        }
    })
}

proptest! {
    // 1000 cases each in every test run; `PROPTEST_CASES=N` runs more
    // (the runs are counted in docs/BENCHMARKS.md).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(1000),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever is done to a stream, the import either gives back exactly
    /// the checkpoint or refuses it with a message, and leaves nothing.
    #[test]
    fn a_spoilt_stream_is_refused_or_comes_back_whole(
        layer in prop_oneof![Just(Layer::Tar), Just(Layer::Zstd), Just(Layer::Age)],
        spoils in prop::collection::vec(spoil(), 1..4),
    ) {
        let f = fixture();
        let (mut bytes, identities) = match layer {
            Layer::Tar => (f.tar.clone(), None),
            Layer::Zstd => (f.zstd.clone(), None),
            Layer::Age => (f.age.clone(), Some(&f.identities)),
        };
        for s in &spoils {
            if !bytes.is_empty() {
                s.apply(&mut bytes);
            }
        }
        if let Layer::Tar = layer {
            bytes = zstd_of(&bytes);
        }
        let landing = Landing::new();
        match landing.import(&bytes, identities) {
            Ok(_) => landing.assert_holds(&f.files),
            Err(err) => {
                prop_assert!(!err.to_string().trim().is_empty());
                landing.assert_untouched();
            }
        }
    }

    /// A manifest from a stream passes only with names that stay inside.
    #[test]
    fn a_mutated_manifest_never_names_a_path_outside(
        spoils in prop::collection::vec(spoil(), 1..4),
    ) {
        let source = fixture();
        let manifest_len = u64::from_str_radix(
            std::str::from_utf8(&source.tar[124..135]).unwrap().trim_end_matches('\0'), 8).unwrap() as usize;
        let mut bytes = source.tar[512..512 + manifest_len].to_vec();
        for s in &spoils {
            if !bytes.is_empty() {
                s.apply(&mut bytes);
            }
        }
        if let Ok(manifest) = serde_json::from_slice::<Manifest>(&bytes)
            && manifest.check_untrusted().is_ok()
        {
            for name in manifest.files.keys() {
                let path = Path::new(name);
                prop_assert!(path.components().all(|c| matches!(c, std::path::Component::Normal(_))), "{name}");
            }
        }
    }
}

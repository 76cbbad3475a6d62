//! Encryption of an exported checkpoint, with age (age-encryption.org/v1:
//! X25519 recipients, ChaCha20-Poly1305 in 64 KiB chunks), so that process
//! memory, secrets included, crosses the network and rests in object stores
//! unreadable, and any change to it is refused.
//!
//! Only X25519 keys are taken: no passphrases (scrypt would cost seconds
//! per import and invites weak secrets) and no plugins (a stream must never
//! make the importing root run a program).

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::str::FromStr;

use super::StreamError;

/// The first bytes of every age file.
const AGE_MAGIC: &[u8] = b"age-encryption.org/";

/// Who can open an export: public keys, `age1...`.
#[derive(Clone, Default)]
pub struct Recipients(Vec<age::x25519::Recipient>);

impl Recipients {
    /// Adds one key, as `age1...`, or every key of a file that holds one
    /// per line (`#` comments and blank lines are skipped), as `age -R`.
    pub fn add(&mut self, key_or_file: &str) -> Result<(), StreamError> {
        if key_or_file.starts_with("age1") && !Path::new(key_or_file).exists() {
            let key = age::x25519::Recipient::from_str(key_or_file)
                .map_err(|e| StreamError::Encryption(format!("recipient {key_or_file}: {e}")))?;
            self.0.push(key);
            return Ok(());
        }
        let text = std::fs::read_to_string(key_or_file).map_err(|e| {
            StreamError::Encryption(format!(
                "recipient {key_or_file}: neither an age1... key nor a file of them: {e}"
            ))
        })?;
        let keys = keys_in::<age::x25519::Recipient>(&text, |line, e| {
            StreamError::Encryption(format!("{key_or_file}, line {line}: not an age1... key: {e}"))
        })?;
        if keys.is_empty() {
            return Err(StreamError::Encryption(format!("{key_or_file} holds no recipient")));
        }
        self.0.extend(keys);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `output`, encrypted to every recipient; `finish` ends the stream.
    pub(super) fn encrypt<W: Write>(&self, output: W) -> Result<age::stream::StreamWriter<W>, StreamError> {
        let encryptor = age::Encryptor::with_recipients(self.0.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| StreamError::Encryption(format!("encrypting: {e}")))?;
        encryptor
            .wrap_output(output)
            .map_err(StreamError::io("writing the encryption header"))
    }
}

/// The private keys an import may open a stream with: an age identity file
/// (`AGE-SECRET-KEY-1...` lines), as `age-keygen` and `podckpt keygen`
/// write it.
pub struct Identities {
    keys: Vec<age::x25519::Identity>,
    file: String,
}

impl Identities {
    pub fn from_file(path: &Path) -> Result<Self, StreamError> {
        let file = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| StreamError::Encryption(format!("identity file {file}: {e}")))?;
        // The line itself is a secret: never part of a message, nor is the
        // parser's account of it.
        let keys = keys_in::<age::x25519::Identity>(&text, |line, _| {
            StreamError::Encryption(format!(
                "identity file {file}, line {line}: not an AGE-SECRET-KEY-1... key"
            ))
        })?;
        if keys.is_empty() {
            return Err(StreamError::Encryption(format!("identity file {file} holds no key")));
        }
        Ok(Self { keys, file })
    }

    fn decrypt<R: BufRead>(&self, input: R) -> Result<age::stream::StreamReader<Budget<R>>, StreamError> {
        let input = Budget::new(input, HEADER_LIMIT);
        let left = input.left.clone();
        let decryptor = age::Decryptor::new_buffered(input).map_err(|e| match e {
            _ if left.get() == 0 => StreamError::Encryption(format!(
                "the encryption header is larger than {} KiB; no stream of ours has one so large",
                HEADER_LIMIT >> 10
            )),
            age::DecryptError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                StreamError::Truncated(format!("in the encryption header: {e}"))
            }
            e => StreamError::Encryption(format!("not a valid age stream: {e}")),
        })?;
        left.set(u64::MAX);
        if decryptor.is_scrypt() {
            return Err(StreamError::Encryption(
                "the stream is encrypted with a passphrase; podckpt takes X25519 keys only".into(),
            ));
        }
        decryptor
            .decrypt(self.keys.iter().map(|k| k as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => StreamError::Encryption(format!(
                    "no key in {} opens this stream: it was encrypted to someone else",
                    self.file
                )),
                e => StreamError::Encryption(format!("the encryption header does not hold: {e}")),
            })
    }
}

/// The keys of a key file, one per line, as `age -R` and `age -i` read
/// them: blank lines and `#` comments are skipped. `bad` makes the error
/// for a line (numbered from 1) that is not a key.
fn keys_in<K: FromStr>(text: &str, bad: impl Fn(usize, K::Err) -> StreamError) -> Result<Vec<K>, StreamError> {
    text.lines()
        .map(str::trim)
        .enumerate()
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(n, line)| K::from_str(line).map_err(|e| bad(n + 1, e)))
        .collect()
}

/// Room for an age header with a few hundred recipients. age parses a
/// header again after each of its lines, so one of unbounded length would
/// cost time quadratic in its length before any key is tried.
const HEADER_LIMIT: u64 = 64 << 10;

/// A reader that gives at most `left` bytes, until `left` is raised.
pub(super) struct Budget<R> {
    inner: R,
    left: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R> Budget<R> {
    fn new(inner: R, limit: u64) -> Self {
        Self {
            inner,
            left: std::rc::Rc::new(std::cell::Cell::new(limit)),
        }
    }
}

impl<R: BufRead> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Budget<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        let left = self.left.get();
        let buf = self.inner.fill_buf()?;
        Ok(&buf[..buf.len().min(usize::try_from(left).unwrap_or(usize::MAX))])
    }

    fn consume(&mut self, amt: usize) {
        self.inner.consume(amt);
        self.left.set(self.left.get().saturating_sub(amt as u64));
    }
}

/// A new key pair: the identity file's text, and its public key to give to
/// `export --recipient`.
pub fn generate_identity() -> (String, String) {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let text = format!(
        "# created: {created}\n# public key: {recipient}\n{}\n",
        identity.to_string().expose_secret()
    );
    (text, recipient)
}

/// The plaintext of `input`: decrypted with `identities` if it is an age
/// stream. An encrypted stream without identities, and a plain one when
/// identities were given, are refused: a node that expects encryption must
/// not take a stream that someone swapped for a plain one.
pub(super) fn plaintext<'a, R: BufRead + 'a>(
    mut input: R,
    identities: Option<&Identities>,
) -> Result<Box<dyn Read + 'a>, StreamError> {
    let head = input.fill_buf().map_err(StreamError::io("reading the stream"))?;
    if head.is_empty() {
        return Err(StreamError::Truncated("the stream is empty".into()));
    }
    if head.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----") {
        return Err(StreamError::Encryption(
            "the stream is armored (text) age; podckpt takes binary age streams only: `age -d` it first, or export again".into(),
        ));
    }
    let encrypted = head.starts_with(&AGE_MAGIC[..head.len().min(AGE_MAGIC.len())]);
    match (encrypted, identities) {
        (true, Some(identities)) => Ok(Box::new(identities.decrypt(input)?)),
        (true, None) => Err(StreamError::Encryption(
            "the stream is encrypted: give the identity file that opens it (--identity)".into(),
        )),
        (false, Some(identities)) => Err(StreamError::Encryption(format!(
            "the stream is not encrypted, but an identity ({}) was given: refusing a stream that may have been swapped for a plain one",
            identities.file
        ))),
        (false, None) => Ok(Box::new(input)),
    }
}

//! WireGuard keys: Curve25519 public and private keys and the optional preshared key.
//!
//! All three are 32 bytes written as 44 characters of standard base64, exactly as `wg genkey`,
//! `wg pubkey` and `wg genpsk` print them, so keys move freely between sitelink and WireGuard.
//! Secrets ([`PrivateKey`], [`PresharedKey`]) have no `Display`, print `<redacted>` in `Debug`,
//! and are zeroed when dropped; [`PrivateKey::expose_base64`] is the one door out.
//!
//! This module does not read key files; that is the config loader's job (it also checks their
//! permissions).

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use zeroize::{Zeroize, Zeroizing};

/// Why a string is not a WireGuard key. The messages never contain the key text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text is not standard, padded base64.
    #[error("not valid base64")]
    NotBase64,
    /// The text is base64 but not of 32 bytes.
    #[error("decodes to {0} bytes, expected 32")]
    WrongLength(usize),
}

/// Decodes standard padded base64 into exactly 32 bytes, wiping the temporary buffer.
fn decode_key(text: &str) -> Result<[u8; 32], KeyError> {
    let decoded = Zeroizing::new(STANDARD.decode(text).map_err(|_| KeyError::NotBase64)?);
    <[u8; 32]>::try_from(decoded.as_slice()).map_err(|_| KeyError::WrongLength(decoded.len()))
}

/// A Curve25519 public key: identifies a peer. Not secret, so `Debug` prints it too.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, as the WireGuard UAPI (`wg set`/`get=1`) writes keys.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The first 8 base64 characters: enough to tell peers apart in logs.
    pub fn short(&self) -> String {
        let mut text = self.to_string();
        text.truncate(8);
        text
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        decode_key(text).map(Self)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A Curve25519 private key: the interface's identity. Zeroed on drop; never displayed.
#[derive(Clone)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    /// A fresh key from the OS random source, clamped exactly like `wg genkey`.
    ///
    /// # Panics
    ///
    /// If the OS has no random source (see [`PrivateKey::try_generate`]).
    pub fn generate() -> Self {
        // getrandom only fails where no kernel entropy source exists at all (not Linux >= 3.17
        // or a readable /dev/urandom); a daemon must not invent keys from anything weaker.
        Self::try_generate().expect("the operating system has no random number source")
    }

    /// Like [`PrivateKey::generate`], but returns the error of the OS random source.
    pub fn try_generate() -> Result<Self, getrandom::Error> {
        let mut key = Self([0; 32]);
        getrandom::getrandom(&mut key.0)?;
        key.0[0] &= 248;
        key.0[31] &= 127;
        key.0[31] |= 64;
        Ok(key)
    }

    /// Wraps raw key bytes (used as given; X25519 clamps when it multiplies).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw secret bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The matching public key, byte-for-byte what `wg pubkey` prints.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::x25519(
            self.0,
            x25519_dalek::X25519_BASEPOINT_BYTES,
        ))
    }

    /// The secret as base64 (for `sitelinkctl genkey`). Nothing else prints the key.
    pub fn expose_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl FromStr for PrivateKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        decode_key(text).map(Self)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// An optional symmetric key mixed into the handshake of one peer. Zeroed on drop; never
/// displayed.
#[derive(Clone)]
pub struct PresharedKey([u8; 32]);

impl PresharedKey {
    /// 32 fresh random bytes, like `wg genpsk` (no clamping: this is not a curve scalar).
    ///
    /// # Panics
    ///
    /// If the OS has no random source (see [`PresharedKey::try_generate`]).
    pub fn generate() -> Self {
        // See PrivateKey::generate for why a missing random source is fatal.
        Self::try_generate().expect("the operating system has no random number source")
    }

    /// Like [`PresharedKey::generate`], but returns the error of the OS random source.
    pub fn try_generate() -> Result<Self, getrandom::Error> {
        let mut key = Self([0; 32]);
        getrandom::getrandom(&mut key.0)?;
        Ok(key)
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw secret bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The secret as base64. Nothing else prints the key.
    pub fn expose_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl FromStr for PresharedKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        decode_key(text).map(Self)
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

impl Drop for PresharedKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_hex(hex: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn rfc7748_alice_vector() {
        // RFC 7748 section 6.1.
        let private = PrivateKey::from_bytes(from_hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        assert_eq!(
            private.public_key().to_hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn rfc7748_bob_vector() {
        let private = PrivateKey::from_bytes(from_hex(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        ));
        assert_eq!(
            private.public_key().to_hex(),
            "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
        );
    }

    #[test]
    fn generated_private_keys_are_clamped_and_distinct() {
        for _ in 0..64 {
            let key = PrivateKey::generate();
            let b = key.as_bytes();
            assert_eq!(b[0] & 7, 0, "low three bits cleared");
            assert_eq!(b[31] & 128, 0, "top bit cleared");
            assert_eq!(b[31] & 64, 64, "second-highest bit set");
        }
        assert_ne!(
            PrivateKey::generate().as_bytes(),
            PrivateKey::generate().as_bytes()
        );
        assert_ne!(
            PresharedKey::generate().as_bytes(),
            PresharedKey::generate().as_bytes()
        );
    }

    #[test]
    fn base64_round_trips() {
        let private = PrivateKey::generate();
        let text = private.expose_base64();
        assert_eq!(text.len(), 44);
        let again: PrivateKey = text.parse().unwrap();
        assert_eq!(again.as_bytes(), private.as_bytes());

        let public = private.public_key();
        let parsed: PublicKey = public.to_string().parse().unwrap();
        assert_eq!(parsed, public);
        assert_eq!(format!("{public:?}"), public.to_string());
        assert_eq!(public.short(), public.to_string()[..8]);

        let psk = PresharedKey::generate();
        let again: PresharedKey = psk.expose_base64().parse().unwrap();
        assert_eq!(again.as_bytes(), psk.as_bytes());
    }

    #[test]
    fn known_base64_matches_bytes() {
        let key: PublicKey = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
            .parse()
            .unwrap();
        assert_eq!(
            key.to_hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn rejects_bad_text() {
        assert_eq!("not base64!".parse::<PublicKey>(), Err(KeyError::NotBase64));
        // Unpadded: WireGuard keys always carry the '=' padding.
        assert_eq!(
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo".parse::<PublicKey>(),
            Err(KeyError::NotBase64)
        );
        let short = STANDARD.encode([1u8; 31]);
        assert_eq!(short.parse::<PublicKey>(), Err(KeyError::WrongLength(31)));
        assert_eq!(
            KeyError::WrongLength(31).to_string(),
            "decodes to 31 bytes, expected 32"
        );
        let long = STANDARD.encode([1u8; 33]);
        assert!(matches!(
            long.parse::<PrivateKey>(),
            Err(KeyError::WrongLength(33))
        ));
        assert!(matches!(
            "".parse::<PresharedKey>(),
            Err(KeyError::WrongLength(0))
        ));
    }

    #[test]
    fn debug_of_secrets_is_redacted() {
        let private = PrivateKey::generate();
        let debug = format!("{private:?}");
        assert_eq!(debug, "PrivateKey(<redacted>)");
        assert!(!debug.contains(&private.expose_base64()));

        let psk = PresharedKey::generate();
        let debug = format!("{psk:?}");
        assert_eq!(debug, "PresharedKey(<redacted>)");
        assert!(!debug.contains(&psk.expose_base64()));
    }

    #[test]
    fn public_key_serde_is_the_base64_string() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Wrapper {
            key: PublicKey,
        }
        let key = PrivateKey::generate().public_key();
        let text = toml::to_string(&Wrapper { key }).unwrap();
        assert_eq!(text.trim(), format!("key = \"{key}\""));
        let back: Wrapper = toml::from_str(&text).unwrap();
        assert_eq!(back.key, key);
        assert!(toml::from_str::<Wrapper>("key = \"abc\"").is_err());
    }
}

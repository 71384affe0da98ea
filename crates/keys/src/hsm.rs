//! PKCS#11 custody: signing keys generated inside a hardware security module (or SoftHSM2)
//! and used there, never in this process.
//!
//! A key made here is a token object marked `CKA_SENSITIVE` and not `CKA_EXTRACTABLE`, so the
//! module itself refuses to reveal the private half (`C_GetAttributeValue` on `CKA_VALUE`
//! fails, and it cannot be wrapped out). Keypost keeps only the public JWK in its key table;
//! the object's `CKA_ID` is the kid, which is how the signer finds it again, and its
//! `CKA_LABEL` binds it to one realm, purpose and algorithm (see [`binding`]).
//!
//! Which realms keep their token-signing keys here is configuration ([`HsmRealms`]). Audit
//! keys stay sealed under the key-encryption key: `keypost audit verify` proves an audit key
//! by unsealing it, which an HSM-held key cannot be.

use std::path::PathBuf;
use std::sync::Mutex;

use aws_lc_rs::digest;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use store::{Kid, RealmId};
use zeroize::Zeroizing;

use crate::material::{Jwk, PublicMaterial};
use crate::{Algorithm, Error, Result};

/// DER of the curve OIDs PKCS#11 takes as `CKA_EC_PARAMS`: id-Ed25519 (1.3.101.112) and
/// prime256v1 (1.2.840.10045.3.1.7).
const ED25519_PARAMS: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Which realms keep their token-signing keys in the HSM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HsmRealms {
    /// Every realm.
    All,
    /// Only these.
    Only(Vec<RealmId>),
}

/// How to reach the token. The PIN is zeroized on drop and never printed.
pub struct HsmConfig {
    /// The PKCS#11 module (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The label of the token to use.
    pub token: String,
    /// The user PIN.
    pub pin: Zeroizing<String>,
    /// Which realms' keys live in the token.
    pub realms: HsmRealms,
}

impl std::fmt::Debug for HsmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmConfig")
            .field("module", &self.module)
            .field("token", &self.token)
            .field("realms", &self.realms)
            .finish_non_exhaustive()
    }
}

/// A logged-in session with one PKCS#11 token.
pub struct Hsm {
    // Kept so the library stays loaded and initialised while the session lives.
    ctx: Pkcs11,
    slot: Slot,
    /// To log in again after the token forgot this process (zeroised on drop).
    pin: AuthPin,
    /// PKCS#11 sessions are not safe for concurrent use; signing takes turns.
    session: Mutex<Session>,
    relogin: Mutex<Relogin>,
    realms: HsmRealms,
}

/// How often the signer may log in again after the token forgot it. Signatures are asked for
/// by outside clients; a token that keeps failing must not see a login per request.
const RELOGIN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The last new login, and whether the token refused the PIN (then never again: real tokens
/// lock — some wipe — after a few wrong PINs; an operator fixes `[hsm] pin` and restarts).
#[derive(Default)]
struct Relogin {
    last: Option<std::time::Instant>,
    pin_refused: bool,
}

/// A private key in the token, as the signer holds it: found by kid, checked against its
/// binding, with the object handle it was last found at.
pub(crate) struct HsmKey {
    kid: Kid,
    binding: String,
    alg: Algorithm,
    handle: Mutex<ObjectHandle>,
}

/// Errors after which the session or its login may be gone (a token reset or reconnected
/// device, the login lost), or the key's handle stale: worth one new session, login and
/// lookup before giving up. A private object's handle reads as invalid once the login is
/// gone, so handle errors are among them.
fn worth_reconnecting(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::TokenNotPresent
                | RvError::ObjectHandleInvalid
                | RvError::KeyHandleInvalid,
            _
        )
    )
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm")
            .field("realms", &self.realms)
            .finish_non_exhaustive()
    }
}

fn hsm_err(what: &str) -> impl FnOnce(CkError) -> Error + '_ {
    move |e| Error::Hsm(format!("{what}: {e}"))
}

impl Hsm {
    /// Loads the module, finds the token by label and logs in as its user.
    pub fn open(config: &HsmConfig) -> Result<Self> {
        let ctx = Pkcs11::new(&config.module)
            .map_err(|e| Error::Hsm(format!("loading {}: {e}", config.module.display())))?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(Error::Hsm(format!("C_Initialize: {e}"))),
        }
        let mut slot = None;
        for s in ctx
            .get_slots_with_token()
            .map_err(hsm_err("listing slots"))?
        {
            let info = ctx.get_token_info(s).map_err(hsm_err("token info"))?;
            if info.label().trim_end() == config.token {
                slot = Some(s);
                break;
            }
        }
        let slot = slot.ok_or_else(|| {
            Error::Hsm(format!(
                "no token labelled {:?} in {}",
                config.token,
                config.module.display()
            ))
        })?;
        let pin = AuthPin::from(config.pin.as_str());
        let session = log_in(&ctx, slot, &pin)
            .map_err(|e| Error::Hsm(format!("logging in to token {:?}: {e}", config.token)))?;
        tracing::info!(token = %config.token, realms = ?config.realms, "HSM session open");
        Ok(Self {
            ctx,
            slot,
            pin,
            session: Mutex::new(session),
            relogin: Mutex::default(),
            realms: config.realms.clone(),
        })
    }

    /// Whether `realm`'s token-signing keys are made in this HSM.
    pub fn holds(&self, realm: &RealmId) -> bool {
        match &self.realms {
            HsmRealms::All => true,
            HsmRealms::Only(list) => list.contains(realm),
        }
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Generates a key pair for `alg` inside the token: private half sensitive and
    /// non-extractable, both halves with the kid as `CKA_ID` and `binding` (see [`binding`])
    /// as `CKA_LABEL`. Returns the public JWK after a test signature has verified under it.
    pub(crate) fn generate(&self, alg: Algorithm, binding: &str) -> Result<Jwk> {
        let session = self.session();
        // A placeholder id until the public key, and so the kid, is known.
        let mut temp_id = [0u8; 16];
        aws_lc_rs::rand::fill(&mut temp_id)?;
        let mut public = vec![
            Attribute::Token(true),
            Attribute::Verify(true),
            Attribute::Id(temp_id.to_vec()),
        ];
        let private = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Id(temp_id.to_vec()),
        ];
        let mechanism = match alg {
            Algorithm::EdDSA => {
                public.push(Attribute::EcParams(ED25519_PARAMS.to_vec()));
                Mechanism::EccEdwardsKeyPairGen
            }
            Algorithm::ES256 => {
                public.push(Attribute::EcParams(P256_PARAMS.to_vec()));
                Mechanism::EccKeyPairGen
            }
            Algorithm::RS256 | Algorithm::PS256 => {
                public.push(Attribute::ModulusBits(2048u64.into()));
                public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
                Mechanism::RsaPkcsKeyPairGen
            }
        };
        let (pub_handle, priv_handle) = session
            .generate_key_pair(&mechanism, &public, &private)
            .map_err(hsm_err("generating a key pair"))?;
        let made = (|| {
            let material = public_material(&session, pub_handle, alg)?;
            let jwk = Jwk::from_public(alg, &material);
            // Refuse a key the module signs wrongly with, before anything depends on it.
            let probe = b"keypost hsm self-test";
            let sig = sign_with(&session, priv_handle, alg, probe)
                .map_err(hsm_err("signing in the HSM"))?;
            let vk = crate::custody::verifying_from(alg, &jwk).ok_or(Error::Crypto)?;
            if vk.verify_sig(probe, &sig).is_err() {
                return Err(Error::Hsm(format!(
                    "the module's {alg} signature does not verify under its own public key"
                )));
            }
            let id = jwk.kid.as_bytes().to_vec();
            let label = binding.as_bytes().to_vec();
            for h in [pub_handle, priv_handle] {
                session
                    .update_attributes(
                        h,
                        &[Attribute::Id(id.clone()), Attribute::Label(label.clone())],
                    )
                    .map_err(hsm_err("labelling the key"))?;
            }
            Ok(jwk)
        })();
        if made.is_err() {
            // Leave no orphan objects behind in the token.
            let _ = session.destroy_object(priv_handle);
            let _ = session.destroy_object(pub_handle);
        }
        made
    }

    /// The private key object `kid`, if the token has it and it was made for `binding`.
    /// The binding lives in the token, out of reach of anyone who can only write Keypost's
    /// database: moving an HSM key's row to another realm does not move the key.
    ///
    /// A session the token has forgotten, or whose login it lost, is renewed first: private
    /// objects are invisible without a login, and a key not found here is left out of the
    /// signer's table.
    pub(crate) fn find(&self, kid: &Kid, binding: &str, alg: Algorithm) -> Result<Option<HsmKey>> {
        let mut session = self.session();
        let logged_in = session.get_session_info().is_ok_and(|info| {
            matches!(
                info.session_state(),
                SessionState::RoUser | SessionState::RwUser
            )
        });
        if !logged_in {
            self.log_in_again(&mut session)?;
        }
        Ok(find_in(&session, kid, binding)?.map(|handle| HsmKey {
            kid: kid.clone(),
            binding: binding.to_owned(),
            alg,
            handle: Mutex::new(handle),
        }))
    }

    /// Whether the token holds the private key `kid` (whatever it is bound to).
    pub fn contains(&self, kid: &Kid) -> Result<bool> {
        Ok(private_key(&self.session(), kid)?.is_some())
    }

    /// Destroys both halves of `kid` in the token, so no one can sign with it again whatever
    /// the key table says. Returns whether the private half was there.
    pub(crate) fn destroy(&self, kid: &Kid) -> Result<bool> {
        let session = self.session();
        let objects = session
            .find_objects(&[Attribute::Id(kid.as_str().as_bytes().to_vec())])
            .map_err(hsm_err("finding a key"))?;
        let mut had_private = false;
        for h in objects {
            let class = session
                .get_attributes(h, &[AttributeType::Class])
                .map_err(hsm_err("reading a key's class"))?;
            had_private |= class.contains(&Attribute::Class(ObjectClass::PRIVATE_KEY));
            session
                .destroy_object(h)
                .map_err(hsm_err("destroying a key"))?;
        }
        Ok(had_private)
    }

    /// Signs `input` with `key`, in JOSE encoding. If the token lost this process's session
    /// or login (or moved the key's handle), logs in on a new session, finds the key again
    /// and tries once more.
    pub(crate) fn sign(&self, key: &HsmKey, input: &[u8]) -> Result<Vec<u8>> {
        let mut session = self.session();
        let mut handle = key.handle.lock().unwrap_or_else(|p| p.into_inner());
        match sign_with(&session, *handle, key.alg, input) {
            Err(e) if worth_reconnecting(&e) => {
                tracing::warn!(target: "keypost::security", kid = %key.kid, error = %e,
                    "HSM refused a signature: logging in on a new session");
                self.log_in_again(&mut session)?;
                *handle = find_in(&session, &key.kid, &key.binding)?
                    .ok_or_else(|| Error::Hsm(format!("key {} is gone from the token", key.kid)))?;
                sign_with(&session, *handle, key.alg, input).map_err(hsm_err("signing in the HSM"))
            }
            r => r.map_err(hsm_err("signing in the HSM")),
        }
    }
}

impl Hsm {
    /// Replaces `session` with a new, logged-in one — at most once per [`RELOGIN_INTERVAL`],
    /// and never after the token refused the PIN.
    fn log_in_again(&self, session: &mut Session) -> Result<()> {
        let mut relogin = self.relogin.lock().unwrap_or_else(|p| p.into_inner());
        if relogin.pin_refused {
            return Err(Error::Hsm(
                "the token refused the PIN; fix [hsm] pin and restart the signer".into(),
            ));
        }
        if relogin
            .last
            .is_some_and(|last| last.elapsed() < RELOGIN_INTERVAL)
        {
            return Err(Error::Hsm(
                "the token lost the session; logging in again shortly".into(),
            ));
        }
        relogin.last = Some(std::time::Instant::now());
        match log_in(&self.ctx, self.slot, &self.pin) {
            Ok(new) => {
                *session = new;
                Ok(())
            }
            Err(e) => {
                if matches!(
                    e,
                    CkError::Pkcs11(
                        RvError::PinIncorrect
                            | RvError::PinLocked
                            | RvError::PinExpired
                            | RvError::PinInvalid
                            | RvError::PinLenRange,
                        _
                    )
                ) {
                    relogin.pin_refused = true;
                    tracing::error!(target: "keypost::security", error = %e,
                        "the HSM refused the PIN; no more logins until the signer restarts");
                }
                Err(Error::Hsm(format!("logging in again: {e}")))
            }
        }
    }
}

/// A new read-write session with the token in `slot`, logged in as its user.
fn log_in(ctx: &Pkcs11, slot: Slot, pin: &AuthPin) -> std::result::Result<Session, CkError> {
    let session = ctx.open_rw_session(slot)?;
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(e) => Err(e),
    }
}

/// The private key object `kid`, if the token has it and it was made for `binding`.
fn find_in(session: &Session, kid: &Kid, binding: &str) -> Result<Option<ObjectHandle>> {
    let Some(handle) = private_key(session, kid)? else {
        return Ok(None);
    };
    let label = session
        .get_attributes(handle, &[AttributeType::Label])
        .map_err(hsm_err("reading a key's label"))?;
    if !label.contains(&Attribute::Label(binding.as_bytes().to_vec())) {
        tracing::error!(target: "keypost::security", %kid, expected = binding,
            "HSM key is bound to something else than its key row says; not using it");
        return Ok(None);
    }
    Ok(Some(handle))
}

/// The private key object whose `CKA_ID` is `kid`.
fn private_key(session: &Session, kid: &Kid) -> Result<Option<ObjectHandle>> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(kid.as_str().as_bytes().to_vec()),
        ])
        .map_err(hsm_err("finding a key"))?;
    Ok(found.into_iter().next())
}

/// What an HSM key is for, as its `CKA_LABEL` records it: realm, purpose and algorithm — the
/// same facts the AAD binds a sealed key to.
pub(crate) fn binding(realm: &RealmId, purpose: store::KeyPurpose, alg: &str) -> String {
    format!("keypost|{realm}|{purpose}|{alg}")
}

fn sign_with(
    session: &Session,
    key: ObjectHandle,
    alg: Algorithm,
    input: &[u8],
) -> std::result::Result<Vec<u8>, CkError> {
    let sign = |m: &Mechanism, data: &[u8]| session.sign(m, key, data);
    match alg {
        Algorithm::EdDSA => sign(
            &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
            input,
        ),
        // CKM_ECDSA signs a digest and returns r || s, which is already the JOSE encoding.
        Algorithm::ES256 => sign(
            &Mechanism::Ecdsa,
            digest::digest(&digest::SHA256, input).as_ref(),
        ),
        Algorithm::RS256 => sign(&Mechanism::Sha256RsaPkcs, input),
        Algorithm::PS256 => sign(
            &Mechanism::Sha256RsaPkcsPss(PkcsPssParams {
                hash_alg: MechanismType::SHA256,
                mgf: PkcsMgfType::MGF1_SHA256,
                s_len: 32u64.into(),
            }),
            input,
        ),
    }
}

fn public_material(session: &Session, key: ObjectHandle, alg: Algorithm) -> Result<PublicMaterial> {
    let wanted: &[AttributeType] = if alg.is_rsa() {
        &[AttributeType::Modulus, AttributeType::PublicExponent]
    } else {
        &[AttributeType::EcPoint]
    };
    let attrs = session
        .get_attributes(key, wanted)
        .map_err(hsm_err("reading the public key"))?;
    let (mut n, mut e, mut point) = (None, None, None);
    for a in attrs {
        match a {
            Attribute::Modulus(v) => n = Some(v),
            Attribute::PublicExponent(v) => e = Some(v),
            Attribute::EcPoint(v) => point = Some(v),
            _ => {}
        }
    }
    let missing = || Error::Hsm("the token did not return the public key".into());
    if alg.is_rsa() {
        let strip = |v: Vec<u8>| v.into_iter().skip_while(|b| *b == 0).collect::<Vec<u8>>();
        return Ok(PublicMaterial::Rsa {
            n: strip(n.ok_or_else(missing)?),
            e: strip(e.ok_or_else(missing)?),
        });
    }
    let len = if alg == Algorithm::EdDSA { 32 } else { 65 };
    ec_point(&point.ok_or_else(missing)?, len)
        .map(PublicMaterial::Raw)
        .ok_or_else(|| Error::Hsm("the token returned a malformed public key".into()))
}

/// `CKA_EC_POINT` is a DER OCTET STRING around the point (PKCS#11 2.40); some modules return
/// the bare point. Accepts either, for a point of exactly `len` bytes.
fn ec_point(v: &[u8], len: usize) -> Option<Vec<u8>> {
    match v {
        [0x04, l, rest @ ..] if usize::from(*l) == len && rest.len() == len => Some(rest.to_vec()),
        _ if v.len() == len => Some(v.to_vec()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::ec_point;

    #[test]
    fn ec_points_are_unwrapped_from_der_or_taken_bare() {
        let ed = [7u8; 32];
        let mut der = vec![0x04, 32];
        der.extend_from_slice(&ed);
        assert_eq!(ec_point(&der, 32).as_deref(), Some(&ed[..]));
        assert_eq!(ec_point(&ed, 32).as_deref(), Some(&ed[..]));

        // A bare P-256 point starts with 0x04 too; its second byte must not be taken for a
        // length.
        let mut p = vec![0x04, 63];
        p.extend_from_slice(&[9u8; 63]);
        assert_eq!(ec_point(&p, 65).as_deref(), Some(&p[..]));
        let mut wrapped = vec![0x04, 65];
        wrapped.extend_from_slice(&p);
        assert_eq!(ec_point(&wrapped, 65).as_deref(), Some(&p[..]));

        assert_eq!(ec_point(&[0x04, 5, 1, 2], 32), None);
        assert_eq!(ec_point(&[], 65), None);
    }
}

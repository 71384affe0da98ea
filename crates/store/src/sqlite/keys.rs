//! [`KeyStore`] for SQLite: signing keys, their row mapper and the key generation.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{SqliteStore, parse_id};
use crate::ids::{Kid, RealmId};
use crate::model::*;
use crate::traits::*;
use crate::{Error, Result};

const KEY_COLS: &str = "kid, realm, purpose, alg, public_jwk, sealed, origin, created_at, activates_at, expires_at, revoked_at";

type KeyRow = (
    String,
    String,
    String,
    String,
    String,
    Vec<u8>,
    String,
    i64,
    i64,
    i64,
    Option<i64>,
);

fn key_row(r: &Row<'_>) -> rusqlite::Result<KeyRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
    ))
}

fn finish_key(
    (
        kid,
        realm,
        purpose,
        alg,
        public_jwk,
        sealed,
        origin,
        created_at,
        activates_at,
        expires_at,
        revoked_at,
    ): KeyRow,
) -> Result<KeyRecord> {
    Ok(KeyRecord {
        kid: parse_id(kid)?,
        realm: parse_id(realm)?,
        purpose: purpose.parse()?,
        alg,
        public_jwk,
        sealed,
        origin: origin.parse()?,
        created_at,
        activates_at,
        expires_at,
        revoked_at,
    })
}

fn bump_generation(conn: &Connection) -> Result<()> {
    conn.execute(
        "UPDATE meta SET value = value + 1 WHERE name = 'key_generation'",
        [],
    )?;
    Ok(())
}

impl KeyStore for SqliteStore {
    fn insert_key(&self, k: &KeyRecord) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            &format!("INSERT INTO keys({KEY_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"),
            params![
                k.kid.as_str(),
                k.realm.as_str(),
                k.purpose.as_str(),
                k.alg,
                k.public_jwk,
                k.sealed,
                k.origin.as_str(),
                k.created_at,
                k.activates_at,
                k.expires_at,
                k.revoked_at
            ],
        )?;
        bump_generation(&tx)?;
        tx.commit()?;
        Ok(())
    }

    fn get_key(&self, kid: &Kid) -> Result<Option<KeyRecord>> {
        self.reader()?
            .prepare_cached(&format!("SELECT {KEY_COLS} FROM keys WHERE kid = ?"))?
            .query_row([kid.as_str()], key_row)
            .optional()?
            .map(finish_key)
            .transpose()
    }

    fn list_keys(&self, realm: Option<&RealmId>) -> Result<Vec<KeyRecord>> {
        let conn = self.reader()?;
        let rows = match realm {
            Some(r) => conn
                .prepare(&format!(
                    "SELECT {KEY_COLS} FROM keys WHERE realm = ? ORDER BY rowid"
                ))?
                .query_map([r.as_str()], key_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?,
            None => conn
                .prepare(&format!("SELECT {KEY_COLS} FROM keys ORDER BY rowid"))?
                .query_map([], key_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?,
        };
        rows.into_iter().map(finish_key).collect()
    }

    fn revoke_key(&self, kid: &Kid, at: UnixTime) -> Result<bool> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE keys SET revoked_at = ? WHERE kid = ? AND revoked_at IS NULL",
            params![at, kid.as_str()],
        )?;
        if n > 0 {
            bump_generation(&tx)?;
        }
        tx.commit()?;
        Ok(n > 0)
    }

    fn replace_sealed(&self, kid: &Kid, sealed: &[u8]) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE keys SET sealed = ? WHERE kid = ?",
            params![sealed, kid.as_str()],
        )?;
        if n == 0 {
            return Err(Error::NotFound(format!("key {kid}")));
        }
        bump_generation(&tx)?;
        tx.commit()?;
        Ok(())
    }

    fn key_generation(&self) -> Result<i64> {
        Ok(self
            .reader()?
            .prepare_cached("SELECT value FROM meta WHERE name = 'key_generation'")?
            .query_row([], |r| r.get(0))?)
    }
}

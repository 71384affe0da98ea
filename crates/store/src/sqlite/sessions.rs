//! [`SessionStore`] for SQLite: sign-in sessions and authorization codes.

use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, from_json, json, parse_id};
use crate::ids::SessionId;
use crate::model::*;
use crate::traits::*;
use crate::{Error, Result};

impl SessionStore for SqliteStore {
    fn create_session(&self, s: &Session) -> Result<()> {
        // The epoch is compared by the insert itself: a password reset committed after the
        // sign-in checked the old password leaves this insert with nothing to insert.
        let n = self.conn()?.execute(
            "INSERT INTO sessions(id, realm, account, auth_time, expires_at, revoked_at, credential_epoch) \
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS(SELECT 1 FROM accounts \
                 WHERE id = ?3 AND credential_epoch = ?7 AND disabled = 0)",
            params![
                s.id.as_str(),
                s.realm.as_str(),
                s.account.as_str(),
                s.auth_time,
                s.expires_at,
                s.revoked_at,
                s.credential_epoch as i64
            ],
        )?;
        if n == 0 {
            return Err(Error::CredentialsChanged(format!(
                "account {} (disabled, or its password changed since the sign-in)",
                s.account
            )));
        }
        Ok(())
    }

    fn get_session(&self, id: &SessionId) -> Result<Option<Session>> {
        let row: Option<(String, String, String, i64, i64, Option<i64>, i64)> = self
            .lookup_reader()?
            .prepare_cached("SELECT id, realm, account, auth_time, expires_at, revoked_at, credential_epoch FROM sessions WHERE id = ?")?
            .query_row([id.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
            .optional()?;
        row.map(
            |(id, realm, account, auth_time, expires_at, revoked_at, epoch)| {
                Ok(Session {
                    id: parse_id(id)?,
                    realm: parse_id(realm)?,
                    account: parse_id(account)?,
                    auth_time,
                    expires_at,
                    revoked_at,
                    credential_epoch: u64::try_from(epoch).unwrap_or(0),
                })
            },
        )
        .transpose()
    }

    fn revoke_session(&self, id: &SessionId, at: UnixTime) -> Result<bool> {
        let n = self.conn()?.execute(
            "UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            params![at, id.as_str()],
        )?;
        Ok(n > 0)
    }

    fn create_auth_code(&self, c: &AuthCode) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO auth_codes(code_hash, realm, client_id, account, session_id, redirect_uri, scope, nonce, code_challenge, resource, created_at, expires_at, used_at, family_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            params![
                c.code_hash, c.realm.as_str(), c.client_id.as_str(), c.account.as_str(), c.session_id.as_str(),
                c.redirect_uri, c.scope, c.nonce, c.code_challenge, json(&c.resource)?, c.created_at, c.expires_at,
                c.used_at, c.family_id
            ],
        )?;
        Ok(())
    }

    fn get_auth_code(&self, code_hash: &[u8]) -> Result<Option<AuthCode>> {
        type CodeRow = (
            String,
            String,
            String,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            String,
            i64,
            i64,
            Option<i64>,
            Option<String>,
        );
        let row: Option<CodeRow> = self
            .lookup_reader()?
            .prepare_cached(
                "SELECT realm, client_id, account, session_id, redirect_uri, scope, nonce, code_challenge, resource, created_at, expires_at, used_at, family_id FROM auth_codes WHERE code_hash = ?",
            )?
            .query_row([code_hash], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?, r.get(12)?)))
            .optional()?;
        let Some((
            realm,
            client_id,
            account,
            session_id,
            redirect_uri,
            scope,
            nonce,
            code_challenge,
            resource,
            created_at,
            expires_at,
            used_at,
            family_id,
        )) = row
        else {
            return Ok(None);
        };
        Ok(Some(AuthCode {
            code_hash: code_hash.to_vec(),
            realm: parse_id(realm)?,
            client_id: parse_id(client_id)?,
            account: parse_id(account)?,
            session_id: parse_id(session_id)?,
            redirect_uri,
            scope,
            nonce,
            code_challenge,
            resource: from_json(&resource)?,
            created_at,
            expires_at,
            used_at,
            family_id,
        }))
    }

    fn consume_auth_code(&self, code_hash: &[u8], at: UnixTime, family_id: &str) -> Result<bool> {
        let n = self.conn()?.execute(
            "UPDATE auth_codes SET used_at = ?, family_id = ? WHERE code_hash = ? AND used_at IS NULL",
            params![at, family_id, code_hash],
        )?;
        Ok(n == 1)
    }
}

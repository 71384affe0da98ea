//! [`RealmStore`], [`AccountStore`] and [`ClientStore`] for SQLite: realms, accounts and
//! clients, their row mappers, and the directory cache of realms and clients.

use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::ledger::revoke_in;
use super::{SqliteStore, from_json, json, lock, parse_id, parse_opt};
use crate::ids::{AccountId, ClientId, RealmId};
use crate::model::*;
use crate::traits::*;
use crate::{Error, Result};

// ---- realms ---------------------------------------------------------------------------------

/// Realms and clients as last read, valid at one directory generation (migration 16: every
/// change to a realm, its domains or a client bumps it). Every token request reads its realm
/// and client; from a reader whose page cache each commit has emptied that was five queries.
/// Only rows that exist are kept (creating one bumps the generation anyway), so requests for
/// made-up realms or clients cannot grow it.
#[derive(Default)]
pub(super) struct Directory {
    inner: Mutex<DirectoryRows>,
}

#[derive(Default)]
struct DirectoryRows {
    generation: i64,
    realms: std::collections::HashMap<RealmId, Realm>,
    clients: std::collections::HashMap<RealmId, std::collections::HashMap<ClientId, Client>>,
}

/// Most realms, and most clients per realm, kept; past it the map starts over.
const DIRECTORY_CAPACITY: usize = 10_000;

impl Directory {
    /// The rows, emptied first if `generation` is newer than theirs. A caller holding an
    /// older generation than the rows' gets an empty, throwaway set: what it reads is not
    /// kept, and nothing newer is served to it.
    fn lock(&self, generation: i64) -> DirectoryGuard<'_> {
        let mut rows = lock(&self.inner);
        if generation > rows.generation {
            *rows = DirectoryRows {
                generation,
                ..DirectoryRows::default()
            };
        }
        DirectoryGuard {
            current: generation == rows.generation,
            rows,
        }
    }
}

struct DirectoryGuard<'a> {
    rows: MutexGuard<'a, DirectoryRows>,
    current: bool,
}

impl DirectoryGuard<'_> {
    fn realm(&self, id: &RealmId) -> Option<&Realm> {
        self.rows.realms.get(id).filter(|_| self.current)
    }

    fn client(&self, realm: &RealmId, id: &ClientId) -> Option<&Client> {
        self.rows
            .clients
            .get(realm)?
            .get(id)
            .filter(|_| self.current)
    }

    fn remember_realm(&mut self, r: &Realm) {
        if !self.current {
            return;
        }
        let realms = &mut self.rows.realms;
        if realms.len() >= DIRECTORY_CAPACITY {
            realms.clear();
        }
        realms.insert(r.id.clone(), r.clone());
    }

    fn remember_client(&mut self, c: &Client) {
        if !self.current {
            return;
        }
        let clients = &mut self.rows.clients;
        if clients.len() >= DIRECTORY_CAPACITY {
            clients.clear();
        }
        let of_realm = clients.entry(c.realm.clone()).or_default();
        if of_realm.len() >= DIRECTORY_CAPACITY {
            of_realm.clear();
        }
        of_realm.insert(c.client_id.clone(), c.clone());
    }
}

impl SqliteStore {
    fn read_realm(&self, id: &RealmId) -> Result<Option<Realm>> {
        let conn = self.lookup_reader()?;
        let row = conn
            .prepare_cached(
                "SELECT id, kind, display_name, access_token_alg, created_at FROM realms WHERE id = ?",
            )?
            .query_row([id.as_str()], realm_row)
            .optional()?;
        row.map(|r| finish_realm(&conn, r)).transpose()
    }

    fn read_client(&self, realm: &RealmId, id: &ClientId) -> Result<Option<Client>> {
        self.lookup_reader()?
            .prepare_cached(&format!(
                "SELECT {CLIENT_COLS} FROM clients WHERE realm = ? AND client_id = ?"
            ))?
            .query_row([realm.as_str(), id.as_str()], client_row)
            .optional()?
            .map(finish_client)
            .transpose()
    }
}

impl RealmStore for SqliteStore {
    fn create_realm(&self, realm: &Realm) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO realms(id, kind, display_name, access_token_alg, created_at) VALUES (?,?,?,?,?)",
            params![realm.id.as_str(), realm.kind.as_str(), realm.display_name, realm.access_token_alg, realm.created_at],
        )?;
        for d in &realm.domains {
            tx.execute(
                "INSERT INTO domains(domain, realm) VALUES (?,?)",
                params![d, realm.id.as_str()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn get_realm(&self, id: &RealmId) -> Result<Option<Realm>> {
        let generation = self.generations()?.directory;
        if let Some(r) = self.directory.lock(generation).realm(id) {
            return Ok(Some(r.clone()));
        }
        let realm = self.read_realm(id)?;
        if let Some(r) = &realm {
            self.directory.lock(generation).remember_realm(r);
        }
        Ok(realm)
    }

    fn list_realms(&self) -> Result<Vec<Realm>> {
        let conn = self.reader()?;
        let rows = conn
            .prepare("SELECT id, kind, display_name, access_token_alg, created_at FROM realms ORDER BY kind = 'tenant', id")?
            .query_map([], realm_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(|r| finish_realm(&conn, r)).collect()
    }

    fn realm_for_domain(&self, domain: &str) -> Result<Option<RealmId>> {
        let realm: Option<String> = self
            .reader()?
            .query_row(
                "SELECT realm FROM domains WHERE domain = ?",
                [domain],
                |r| r.get(0),
            )
            .optional()?;
        parse_opt(realm)
    }

    fn set_access_token_alg(&self, id: &RealmId, alg: &str) -> Result<()> {
        let n = self.conn()?.execute(
            "UPDATE realms SET access_token_alg = ? WHERE id = ?",
            params![alg, id.as_str()],
        )?;
        if n == 0 {
            return Err(Error::NotFound(format!("realm {id}")));
        }
        Ok(())
    }
}

type RealmRow = (String, String, String, String, i64);

fn realm_row(r: &Row<'_>) -> rusqlite::Result<RealmRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn finish_realm(
    conn: &Connection,
    (id, kind, display_name, alg, created_at): RealmRow,
) -> Result<Realm> {
    let domains = conn
        .prepare_cached("SELECT domain FROM domains WHERE realm = ? ORDER BY domain")?
        .query_map([&id], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(Realm {
        id: parse_id(id)?,
        kind: kind.parse()?,
        display_name,
        domains,
        access_token_alg: alg,
        created_at,
    })
}

// ---- accounts -------------------------------------------------------------------------------

const ACCOUNT_COLS: &str = "id, realm, email, display_name, password_hash, disabled, role, created_at, must_change_password, credential_epoch";

fn account_row(r: &Row<'_>) -> rusqlite::Result<AccountRow> {
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
    ))
}

type AccountRow = (
    String,
    String,
    String,
    String,
    String,
    bool,
    String,
    i64,
    bool,
    i64,
);

fn finish_account(
    (
        id,
        realm,
        email,
        display_name,
        password_hash,
        disabled,
        role,
        created_at,
        must_change_password,
        credential_epoch,
    ): AccountRow,
) -> Result<Account> {
    Ok(Account {
        id: parse_id(id)?,
        realm: parse_id(realm)?,
        email,
        display_name,
        password_hash,
        disabled,
        role: role.parse()?,
        created_at,
        must_change_password,
        credential_epoch: u64::try_from(credential_epoch).unwrap_or(0),
    })
}

impl AccountStore for SqliteStore {
    fn create_account(&self, a: &Account) -> Result<()> {
        self.conn()?.execute(
            &format!("INSERT INTO accounts({ACCOUNT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)"),
            params![
                a.id.as_str(),
                a.realm.as_str(),
                a.email,
                a.display_name,
                a.password_hash,
                a.disabled,
                a.role.as_str(),
                a.created_at,
                a.must_change_password,
                a.credential_epoch as i64
            ],
        )?;
        Ok(())
    }

    fn get_account(&self, id: &AccountId) -> Result<Option<Account>> {
        self.lookup_reader()?
            .prepare_cached(&format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE id = ?"))?
            .query_row([id.as_str()], account_row)
            .optional()?
            .map(finish_account)
            .transpose()
    }

    fn find_account_by_email(&self, email: &str) -> Result<Option<Account>> {
        self.reader()?
            .prepare_cached(&format!(
                "SELECT {ACCOUNT_COLS} FROM accounts WHERE email = ?"
            ))?
            .query_row([email], account_row)
            .optional()?
            .map(finish_account)
            .transpose()
    }

    fn list_accounts(&self, realm: Option<&RealmId>) -> Result<Vec<Account>> {
        let conn = self.reader()?;
        let rows = match realm {
            Some(r) => conn
                .prepare(&format!(
                    "SELECT {ACCOUNT_COLS} FROM accounts WHERE realm = ? ORDER BY email"
                ))?
                .query_map([r.as_str()], account_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?,
            None => conn
                .prepare(&format!(
                    "SELECT {ACCOUNT_COLS} FROM accounts ORDER BY realm, email"
                ))?
                .query_map([], account_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?,
        };
        rows.into_iter().map(finish_account).collect()
    }

    fn set_account_disabled(&self, id: &AccountId, disabled: bool) -> Result<()> {
        let n = self.conn()?.execute(
            "UPDATE accounts SET disabled = ? WHERE id = ?",
            params![disabled, id.as_str()],
        )?;
        if n == 0 {
            return Err(Error::NotFound(format!("account {id}")));
        }
        Ok(())
    }

    fn set_password_hash(
        &self,
        id: &AccountId,
        hash: &str,
        must_change: bool,
        at: UnixTime,
    ) -> Result<CredentialChange> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let epoch: Option<i64> = tx
            .query_row(
                "UPDATE accounts SET password_hash = ?, must_change_password = ?, \
                 credential_epoch = credential_epoch + 1 WHERE id = ? RETURNING credential_epoch",
                params![hash, must_change, id.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        let Some(epoch) = epoch else {
            return Err(Error::NotFound(format!("account {id}")));
        };
        let (sessions, tokens) = revoke_in(&tx, &RevokeScope::Account(id.clone()), at)?;
        tx.commit()?;
        Ok(CredentialChange {
            epoch: u64::try_from(epoch).unwrap_or(0),
            sessions,
            tokens,
        })
    }

    fn count_accounts_with_role(&self, role: Role) -> Result<u64> {
        Ok(self.reader()?.query_row(
            "SELECT COUNT(*) FROM accounts WHERE role = ?",
            [role.as_str()],
            |r| r.get(0),
        )?)
    }

    fn live_accounts_with_role(
        &self,
        role: Role,
        realm: Option<&RealmId>,
        limit: u32,
    ) -> Result<Vec<Account>> {
        let conn = self.reader()?;
        // Two statements, so each walks `accounts_role` (role, realm, email) by its prefix.
        let rows = match realm {
            Some(realm) => conn
                .prepare_cached(&format!(
                    "SELECT {ACCOUNT_COLS} FROM accounts WHERE role = ? AND realm = ? \
                     AND disabled = 0 ORDER BY email LIMIT ?"
                ))?
                .query_map(params![role.as_str(), realm.as_str(), limit], account_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?,
            None => conn
                .prepare_cached(&format!(
                    "SELECT {ACCOUNT_COLS} FROM accounts WHERE role = ? AND disabled = 0 \
                     ORDER BY email LIMIT ?"
                ))?
                .query_map(params![role.as_str(), limit], account_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?,
        };
        rows.into_iter().map(finish_account).collect()
    }
}

// ---- clients --------------------------------------------------------------------------------

const CLIENT_COLS: &str = "realm, client_id, name, secret_hash, redirect_uris, grant_types, first_party, id_token_alg, created_at, scopes";

type ClientRow = (
    String,
    String,
    String,
    Option<Vec<u8>>,
    String,
    String,
    bool,
    Option<String>,
    i64,
    Option<String>,
);

fn client_row(r: &Row<'_>) -> rusqlite::Result<ClientRow> {
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
    ))
}

fn finish_client(
    (
        realm,
        client_id,
        name,
        secret_hash,
        redirect_uris,
        grant_types,
        first_party,
        id_token_alg,
        created_at,
        scopes,
    ): ClientRow,
) -> Result<Client> {
    Ok(Client {
        realm: parse_id(realm)?,
        client_id: parse_id(client_id)?,
        name,
        secret_hash,
        redirect_uris: from_json(&redirect_uris)?,
        grant_types: from_json(&grant_types)?,
        first_party,
        id_token_alg,
        created_at,
        scopes: scopes.as_deref().map(from_json).transpose()?,
    })
}

impl ClientStore for SqliteStore {
    fn create_client(&self, c: &Client) -> Result<()> {
        self.conn()?.execute(
            &format!("INSERT INTO clients({CLIENT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)"),
            params![
                c.realm.as_str(),
                c.client_id.as_str(),
                c.name,
                c.secret_hash,
                json(&c.redirect_uris)?,
                json(&c.grant_types)?,
                c.first_party,
                c.id_token_alg,
                c.created_at,
                c.scopes.as_ref().map(json).transpose()?
            ],
        )?;
        Ok(())
    }

    fn get_client(&self, realm: &RealmId, id: &ClientId) -> Result<Option<Client>> {
        let generation = self.generations()?.directory;
        if let Some(c) = self.directory.lock(generation).client(realm, id) {
            return Ok(Some(c.clone()));
        }
        let client = self.read_client(realm, id)?;
        if let Some(c) = &client {
            self.directory.lock(generation).remember_client(c);
        }
        Ok(client)
    }

    fn list_clients(&self, realm: &RealmId) -> Result<Vec<Client>> {
        let conn = self.reader()?;
        let rows = conn
            .prepare(&format!(
                "SELECT {CLIENT_COLS} FROM clients WHERE realm = ? ORDER BY client_id"
            ))?
            .query_map([realm.as_str()], client_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(finish_client).collect()
    }
}

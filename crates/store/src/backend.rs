//! Choosing the backend: [`StoreConfig`] says which store to open (today the embedded SQLite
//! database; PostgreSQL adds `postgres://` later), [`open`] opens it behind [`Store`].

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::{Error, Result, SqliteStore, Store};

/// Which store to open.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreConfig {
    /// An SQLite database file, created and migrated if needed.
    Sqlite {
        /// The database file.
        path: PathBuf,
    },
}

impl StoreConfig {
    /// The SQLite database `keypost.db` in a data directory.
    pub fn in_data_dir(dir: &std::path::Path) -> Self {
        StoreConfig::Sqlite {
            path: dir.join("keypost.db"),
        }
    }
}

/// The store's URL, as [`StoreConfig::from_str`] reads it.
impl std::fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreConfig::Sqlite { path } => write!(f, "sqlite://{}", path.display()),
        }
    }
}

impl FromStr for StoreConfig {
    type Err = Error;

    /// A store URL: `sqlite://PATH` (`sqlite:///var/lib/keypost/keypost.db` is absolute,
    /// `sqlite://keypost.db` relative to the working directory). Any other scheme is refused
    /// by name, so a typo or a backend this build lacks is never mistaken for a file path.
    fn from_str(url: &str) -> Result<Self> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(Error::Config(format!(
                "a store URL is scheme://..., such as sqlite:///var/lib/keypost/keypost.db; got {url:?}"
            )));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" if !rest.is_empty() => Ok(StoreConfig::Sqlite { path: rest.into() }),
            "sqlite" => Err(Error::Config("sqlite:// names no database file".into())),
            other => Err(Error::Config(format!(
                "unknown store scheme {other:?} (this build has: sqlite)"
            ))),
        }
    }
}

/// Opens the store `config` names.
pub fn open(config: &StoreConfig) -> Result<Arc<dyn Store>> {
    match config {
        StoreConfig::Sqlite { path } => Ok(Arc::new(SqliteStore::open(path)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_backend_and_unknown_schemes_are_refused() {
        assert_eq!(
            "sqlite:///var/lib/keypost/keypost.db"
                .parse::<StoreConfig>()
                .unwrap(),
            StoreConfig::Sqlite {
                path: "/var/lib/keypost/keypost.db".into()
            }
        );
        assert_eq!(
            "SQLite://keypost.db".parse::<StoreConfig>().unwrap(),
            StoreConfig::Sqlite {
                path: "keypost.db".into()
            }
        );
        for bad in [
            "postgres://db/keypost",
            "mysql://x",
            "sqlite://",
            "keypost.db",
            "",
        ] {
            let e = bad.parse::<StoreConfig>().unwrap_err();
            assert!(matches!(e, Error::Config(_)), "{bad}: {e:?}");
        }
        for url in [
            "sqlite:///var/lib/keypost/keypost.db",
            "sqlite://keypost.db",
        ] {
            let config: StoreConfig = url.parse().unwrap();
            assert_eq!(config.to_string(), url, "round trip");
        }
        let e = "postgres://db/keypost".parse::<StoreConfig>().unwrap_err();
        assert!(e.to_string().contains("\"postgres\""), "{e}");
    }

    #[test]
    fn open_gives_the_sqlite_store_of_a_data_dir() {
        let dir = std::env::temp_dir().join(format!("keypost-open-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = StoreConfig::in_data_dir(&dir);
        let s = open(&config).unwrap();
        s.create_realm(&crate::contract::realm("contoso", &[]))
            .unwrap();
        drop(s);
        assert!(dir.join("keypost.db").is_file());
        let s = open(&config).unwrap();
        assert_eq!(s.list_realms().unwrap().len(), 1, "the same database again");
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

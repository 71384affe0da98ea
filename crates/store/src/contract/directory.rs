//! Realms, their domains, accounts.

use super::*;

pub fn domains_belong_to_one_realm(new: &NewStore) {
    let s = new();
    s.create_realm(&realm("contoso", &["contoso.test"]))
        .unwrap();
    assert!(matches!(
        s.create_realm(&realm("fabrikam", &["contoso.test"])),
        Err(Error::Conflict(_))
    ));
    // The failed create left nothing behind.
    assert!(
        s.get_realm(&RealmId::new("fabrikam").unwrap())
            .unwrap()
            .is_none()
    );
    assert_eq!(
        s.realm_for_domain("contoso.test")
            .unwrap()
            .unwrap()
            .as_str(),
        "contoso"
    );
}

pub fn live_accounts_with_a_role_are_found_by_role_and_realm(new: &NewStore) {
    let s = new();
    for r in ["contoso", "fabrikam"] {
        s.create_realm(&realm(r, &[&format!("{r}.test")])).unwrap();
    }
    let make = |id: &str, realm: &str, role: Role, disabled: bool| {
        s.create_account(&Account {
            id: AccountId::new(id).unwrap(),
            realm: RealmId::new(realm).unwrap(),
            email: format!("{id}@{realm}.test"),
            display_name: id.into(),
            password_hash: "x".into(),
            must_change_password: false,
            credential_epoch: 0,
            disabled,
            role,
            created_at: 1,
        })
        .unwrap();
    };
    make("b-admin", "contoso", Role::TenantAdmin, false);
    make("a-admin", "contoso", Role::TenantAdmin, false);
    make("gone", "contoso", Role::TenantAdmin, true);
    make("user", "contoso", Role::User, false);
    make("f-admin", "fabrikam", Role::TenantAdmin, false);
    make("boss", "fabrikam", Role::ProviderAdmin, false);
    let emails = |role, realm: Option<&str>, limit| -> Vec<String> {
        let realm = realm.map(|r| RealmId::new(r).unwrap());
        s.live_accounts_with_role(role, realm.as_ref(), limit)
            .unwrap()
            .into_iter()
            .map(|a| a.email)
            .collect()
    };
    assert_eq!(
        emails(Role::TenantAdmin, Some("contoso"), 10),
        ["a-admin@contoso.test", "b-admin@contoso.test"]
    );
    assert_eq!(
        emails(Role::TenantAdmin, Some("contoso"), 1),
        ["a-admin@contoso.test"]
    );
    assert_eq!(emails(Role::TenantAdmin, None, 10).len(), 3);
    assert_eq!(
        emails(Role::ProviderAdmin, None, 10),
        ["boss@fabrikam.test"]
    );
}

/// A change to a realm or a client made through the store is seen by the next read, and bumps
/// the directory generation that caches of realms and clients compare.
pub fn a_directory_change_is_seen_by_the_next_read(new: &NewStore) {
    let s = new();
    let id = RealmId::new("contoso").unwrap();
    s.create_realm(&realm("contoso", &["contoso.test"]))
        .unwrap();
    let g = s.generations().unwrap();
    let app = ClientId::new("app").unwrap();
    s.create_client(&client(&id, &app)).unwrap();
    let created = s.generations().unwrap();
    assert!(created.directory > g.directory, "a new client");
    assert_eq!(s.list_clients(&id).unwrap(), [client(&id, &app)]);
    assert_eq!(s.get_realm(&id).unwrap().unwrap().access_token_alg, "EdDSA");
    s.set_access_token_alg(&id, "ES256").unwrap();
    assert_eq!(s.get_realm(&id).unwrap().unwrap().access_token_alg, "ES256");
    assert!(s.generations().unwrap().directory > created.directory);
    assert_eq!(
        s.realm_for_domain("contoso.test").unwrap().as_ref(),
        Some(&id)
    );
    assert_eq!(s.realm_for_domain("fabrikam.test").unwrap(), None);
}

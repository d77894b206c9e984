//! The SQL that SQLite and PostgreSQL share, written once. Both drivers accept `$N`
//! placeholders and the column types map to the same Rust types (UUIDs are 16-byte BLOBs in
//! SQLite, timestamps RFC 3339 TEXT), so one macro body serves both concrete pools.

/// Implements [`super::Store`] for a store type with `read` and `write` pools of one driver.
/// Backend-specific trait items (`backend`, …) are passed in the braces.
macro_rules! impl_store {
    ($store:ty, $db:ty, { $($extra:item)* }) => {
        fn grant_from_row(row: &<$db as sqlx::Database>::Row) -> Result<$crate::store::GrantRecord, sqlx::Error> {
            use sqlx::Row;
            Ok($crate::store::GrantRecord {
                id: row.try_get("id")?,
                principal: row.try_get("principal")?,
                role: row.try_get("role")?,
                region: row.try_get("region")?,
                granted_by: row.try_get("granted_by")?,
                parent_id: row.try_get("parent_id")?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
                revoked_at: row.try_get("revoked_at")?,
                revoked_by: row.try_get("revoked_by")?,
            })
        }

        async fn insert_grant_in(
            tx: &mut sqlx::Transaction<'_, $db>,
            g: &$crate::store::GrantRecord,
        ) -> Result<(), sqlx::Error> {
            sqlx::query(
                "INSERT INTO grants (id, principal, role, region, granted_by, parent_id, created_at, expires_at, \
                 revoked_at, revoked_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(g.id)
            .bind(&g.principal)
            .bind(&g.role)
            .bind(&g.region)
            .bind(&g.granted_by)
            .bind(g.parent_id)
            .bind(g.created_at)
            .bind(g.expires_at)
            .bind(g.revoked_at)
            .bind(&g.revoked_by)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }

        const CUSTOMER_SELECT: &str =
            "SELECT c.id, c.region, c.kind, c.vip_level, c.status, c.version, c.kek_version, c.wrapped_key, \
             c.created_at, c.updated_at, f.field, f.sealed \
             FROM customers c LEFT JOIN customer_fields f ON f.customer_id = c.id";

        /// Groups rows of `CUSTOMER_SELECT` (ordered by customer) into records.
        fn records_from_rows(
            rows: &[<$db as sqlx::Database>::Row],
        ) -> Result<Vec<$crate::store::CustomerRecord>, $crate::store::StoreError> {
            use sqlx::Row;
            let mut out: Vec<$crate::store::CustomerRecord> = Vec::new();
            for row in rows {
                let id: uuid::Uuid = row.try_get("id")?;
                if out.last().is_none_or(|r| r.id != id) {
                    let kind: String = row.try_get("kind")?;
                    let status: String = row.try_get("status")?;
                    out.push($crate::store::CustomerRecord {
                        id,
                        region: row.try_get("region")?,
                        kind: $crate::store::parse_kind(&kind)?,
                        vip_level: row.try_get("vip_level")?,
                        status: $crate::store::parse_status(&status)?,
                        version: row.try_get("version")?,
                        wrapped_key: $crate::crypto::WrappedKey {
                            kek_version: $crate::store::kek_version(row.try_get("kek_version")?)?,
                            bytes: row.try_get("wrapped_key")?,
                        },
                        created_at: row.try_get("created_at")?,
                        updated_at: row.try_get("updated_at")?,
                        fields: Vec::new(),
                        index: Vec::new(),
                    });
                }
                if let (Some(name), Some(record)) = (row.try_get::<Option<String>, _>("field")?, out.last_mut()) {
                    let sealed: Option<Vec<u8>> = row.try_get("sealed")?;
                    record.fields.push($crate::store::SealedField {
                        name,
                        sealed: sealed.ok_or($crate::store::StoreError::Corrupt("field without ciphertext"))?,
                    });
                }
            }
            Ok(out)
        }

        async fn insert_index_in(
            tx: &mut sqlx::Transaction<'_, $db>,
            id: uuid::Uuid,
            entries: &[$crate::store::IndexEntry],
        ) -> Result<(), sqlx::Error> {
            for e in entries {
                sqlx::query("INSERT INTO blind_index (field, digest, customer_id, key_version) VALUES ($1, $2, $3, $4)")
                    .bind(&e.field)
                    .bind(&e.digest)
                    .bind(id)
                    .bind(e.key_version)
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(())
        }

        const GRANT_COLUMNS: &str =
            "id, principal, role, region, granted_by, parent_id, created_at, expires_at, revoked_at, revoked_by";
        const BUMP_EPOCH: &str = "UPDATE authz_epoch SET value = value + 1 WHERE id = 1";

        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            $($extra)*

            async fn ping(&self) -> Result<(), $crate::store::StoreError> {
                let mut conn = self.read.acquire().await.map_err($crate::store::StoreError::Unavailable)?;
                sqlx::query("SELECT 1").execute(&mut *conn).await?;
                Ok(())
            }

            async fn insert_customer(&self, r: &$crate::store::CustomerRecord) -> Result<(), $crate::store::StoreError> {
                let mut tx = self.write.begin().await.map_err($crate::store::StoreError::Unavailable)?;
                sqlx::query(
                    "INSERT INTO customers (id, region, kind, vip_level, status, version, kek_version, \
                     wrapped_key, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(r.id)
                .bind(&r.region)
                .bind(r.kind.as_str())
                .bind(r.vip_level)
                .bind(r.status.as_str())
                .bind(r.version)
                .bind(i64::from(r.wrapped_key.kek_version))
                .bind(&r.wrapped_key.bytes)
                .bind(r.created_at)
                .bind(r.updated_at)
                .execute(&mut *tx)
                .await?;
                for f in &r.fields {
                    sqlx::query("INSERT INTO customer_fields (customer_id, field, sealed) VALUES ($1, $2, $3)")
                        .bind(r.id)
                        .bind(&f.name)
                        .bind(&f.sealed)
                        .execute(&mut *tx)
                        .await?;
                }
                insert_index_in(&mut tx, r.id, &r.index).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn customer(&self, id: uuid::Uuid) -> Result<Option<$crate::store::CustomerRecord>, $crate::store::StoreError> {
                let mut conn = self.read.acquire().await.map_err($crate::store::StoreError::Unavailable)?;
                // One statement, so the record and its fields come from one snapshot: a concurrent
                // update can never pair a row of one version with fields sealed for another.
                let rows = sqlx::query(&format!("{CUSTOMER_SELECT} WHERE c.id = $1 ORDER BY f.field"))
                    .bind(id)
                    .fetch_all(&mut *conn)
                    .await?;
                Ok(records_from_rows(&rows)?.pop())
            }

            async fn customers_by_ids(
                &self,
                ids: &[uuid::Uuid],
                scopes: &[$crate::domain::RegionId],
            ) -> Result<Vec<$crate::store::CustomerRecord>, $crate::store::StoreError> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut conn = self.read.acquire().await.map_err($crate::store::StoreError::Unavailable)?;
                let mut qb = sqlx::QueryBuilder::<$db>::new(format!("{CUSTOMER_SELECT} WHERE c.id IN ("));
                let mut list = qb.separated(", ");
                for id in ids {
                    list.push_bind(*id);
                }
                qb.push(")");
                $crate::store::push_scope_filter(&mut qb, "c.region", scopes);
                qb.push(" ORDER BY c.id, f.field");
                let rows = qb.build().fetch_all(&mut *conn).await?;
                records_from_rows(&rows)
            }

            async fn search_customers(&self, q: &$crate::store::CustomerQuery) -> Result<Vec<uuid::Uuid>, $crate::store::StoreError> {
                use sqlx::Row;
                let mut conn = self.read.acquire().await.map_err($crate::store::StoreError::Unavailable)?;
                let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT c.id FROM customers c WHERE 1 = 1");
                for (field, digest) in &q.matches {
                    qb.push(" AND c.id IN (SELECT customer_id FROM blind_index WHERE field = ");
                    qb.push_bind(field.as_str());
                    qb.push(" AND digest = ");
                    qb.push_bind(digest.as_slice());
                    qb.push(")");
                }
                $crate::store::push_scope_filter(&mut qb, "c.region", &q.scopes);
                if let Some(region) = &q.region {
                    $crate::store::push_scope_filter(&mut qb, "c.region", std::slice::from_ref(region));
                }
                if let Some(kind) = q.kind {
                    qb.push(" AND c.kind = ");
                    qb.push_bind(kind.as_str());
                }
                if let Some(status) = q.status {
                    qb.push(" AND c.status = ");
                    qb.push_bind(status.as_str());
                }
                if let Some(after) = q.after {
                    qb.push(" AND c.id > ");
                    qb.push_bind(after);
                }
                qb.push(" ORDER BY c.id LIMIT ");
                qb.push_bind(i64::from(q.limit));
                let rows = qb.build().fetch_all(&mut *conn).await?;
                Ok(rows.iter().map(|r| r.try_get(0)).collect::<Result<Vec<_>, _>>()?)
            }

            async fn update_customer(&self, u: &$crate::store::CustomerUpdate) -> Result<$crate::store::UpdateOutcome, $crate::store::StoreError> {
                let mut tx = self.write.begin().await.map_err($crate::store::StoreError::Unavailable)?;
                let updated = sqlx::query(
                    "UPDATE customers SET version = $1, vip_level = $2, updated_at = $3 WHERE id = $4 AND version = $5",
                )
                .bind(u.version)
                .bind(u.vip_level)
                .bind(u.updated_at)
                .bind(u.id)
                .bind(u.expected_version)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if updated == 0 {
                    let exists = sqlx::query("SELECT 1 FROM customers WHERE id = $1")
                        .bind(u.id)
                        .fetch_optional(&mut *tx)
                        .await?
                        .is_some();
                    tx.rollback().await?;
                    return Ok(if exists {
                        $crate::store::UpdateOutcome::VersionConflict
                    } else {
                        $crate::store::UpdateOutcome::NotFound
                    });
                }
                sqlx::query("DELETE FROM customer_fields WHERE customer_id = $1").bind(u.id).execute(&mut *tx).await?;
                for f in &u.fields {
                    sqlx::query("INSERT INTO customer_fields (customer_id, field, sealed) VALUES ($1, $2, $3)")
                        .bind(u.id)
                        .bind(&f.name)
                        .bind(&f.sealed)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query("DELETE FROM blind_index WHERE customer_id = $1").bind(u.id).execute(&mut *tx).await?;
                insert_index_in(&mut tx, u.id, &u.index).await?;
                tx.commit().await?;
                Ok($crate::store::UpdateOutcome::Updated)
            }

            async fn authz_epoch(&self) -> Result<i64, $crate::store::StoreError> {
                use sqlx::Row;
                let mut conn = self.read.acquire().await.map_err($crate::store::StoreError::Unavailable)?;
                Ok(sqlx::query("SELECT value FROM authz_epoch WHERE id = 1").fetch_one(&mut *conn).await?.try_get(0)?)
            }

            async fn authz_state(&self) -> Result<$crate::store::AuthzState, $crate::store::StoreError> {
                use sqlx::Row;
                let mut conn = self.read.acquire().await.map_err($crate::store::StoreError::Unavailable)?;
                // The epoch is read first: a change committed meanwhile shows up as a newer epoch at
                // the next poll, so the state is never considered fresher than it is.
                let epoch: i64 = sqlx::query("SELECT value FROM authz_epoch WHERE id = 1").fetch_one(&mut *conn).await?.try_get(0)?;
                let grants = sqlx::query(&format!("SELECT {GRANT_COLUMNS} FROM grants"))
                    .fetch_all(&mut *conn)
                    .await?
                    .iter()
                    .map(grant_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                let token_revocations = sqlx::query("SELECT principal, not_before FROM token_revocations")
                    .fetch_all(&mut *conn)
                    .await?
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?;
                Ok($crate::store::AuthzState { epoch, grants, token_revocations })
            }

            async fn grant(&self, id: uuid::Uuid) -> Result<Option<$crate::store::GrantRecord>, $crate::store::StoreError> {
                let mut conn = self.read.acquire().await.map_err($crate::store::StoreError::Unavailable)?;
                let row = sqlx::query(&format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?;
                Ok(row.as_ref().map(grant_from_row).transpose()?)
            }

            async fn insert_grant(&self, g: &$crate::store::GrantRecord) -> Result<(), $crate::store::StoreError> {
                let mut tx = self.write.begin().await.map_err($crate::store::StoreError::Unavailable)?;
                insert_grant_in(&mut tx, g).await?;
                sqlx::query(BUMP_EPOCH).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn insert_bootstrap_grant(&self, g: &$crate::store::GrantRecord) -> Result<$crate::store::BootstrapOutcome, $crate::store::StoreError> {
                let mut tx = self.write.begin().await.map_err($crate::store::StoreError::Unavailable)?;
                let existing = sqlx::query("SELECT 1 FROM grants WHERE parent_id IS NULL AND revoked_at IS NULL")
                    .fetch_optional(&mut *tx)
                    .await?;
                if existing.is_some() {
                    return Ok($crate::store::BootstrapOutcome::AlreadyBootstrapped);
                }
                match insert_grant_in(&mut tx, g).await {
                    Ok(()) => {}
                    // A concurrent bootstrap won the race (unique index on live root grants).
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        return Ok($crate::store::BootstrapOutcome::AlreadyBootstrapped)
                    }
                    Err(e) => return Err(e.into()),
                }
                sqlx::query(BUMP_EPOCH).execute(&mut *tx).await?;
                match tx.commit().await {
                    Ok(()) => Ok($crate::store::BootstrapOutcome::Created),
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok($crate::store::BootstrapOutcome::AlreadyBootstrapped),
                    Err(e) => Err(e.into()),
                }
            }

            async fn revoke_grant(&self, id: uuid::Uuid, by: &str, at: chrono::DateTime<chrono::Utc>) -> Result<bool, $crate::store::StoreError> {
                let mut tx = self.write.begin().await.map_err($crate::store::StoreError::Unavailable)?;
                let n = sqlx::query("UPDATE grants SET revoked_at = $1, revoked_by = $2 WHERE id = $3 AND revoked_at IS NULL")
                    .bind(at)
                    .bind(by)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query(BUMP_EPOCH).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(n > 0)
            }

            async fn grants_page(&self, q: &$crate::store::GrantQuery) -> Result<Vec<$crate::store::GrantRecord>, $crate::store::StoreError> {
                let mut conn = self.read.acquire().await.map_err($crate::store::StoreError::Unavailable)?;
                let mut qb = sqlx::QueryBuilder::<$db>::new(format!("SELECT {GRANT_COLUMNS} FROM grants WHERE 1 = 1"));
                $crate::store::push_scope_filter(&mut qb, "region", &q.scopes);
                if let Some(p) = &q.principal {
                    qb.push(" AND principal = ");
                    qb.push_bind(p.as_str());
                }
                if let Some(after) = q.after {
                    qb.push(" AND id > ");
                    qb.push_bind(after);
                }
                qb.push(" ORDER BY id LIMIT ");
                qb.push_bind(i64::from(q.limit));
                let rows = qb.build().fetch_all(&mut *conn).await?;
                Ok(rows.iter().map(grant_from_row).collect::<Result<Vec<_>, _>>()?)
            }

            async fn revoke_tokens(&self, principal: &str, not_before: chrono::DateTime<chrono::Utc>) -> Result<(), $crate::store::StoreError> {
                let mut tx = self.write.begin().await.map_err($crate::store::StoreError::Unavailable)?;
                sqlx::query(
                    "INSERT INTO token_revocations (principal, not_before) VALUES ($1, $2) \
                     ON CONFLICT (principal) DO UPDATE SET not_before = excluded.not_before",
                )
                .bind(principal)
                .bind(not_before)
                .execute(&mut *tx)
                .await?;
                sqlx::query(BUMP_EPOCH).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            }
        }
    };
}

pub(crate) use impl_store;

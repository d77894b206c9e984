//! The SQL that SQLite and PostgreSQL share, written once. Both drivers accept `$N`
//! placeholders and the column types map to the same Rust types (UUIDs are 16-byte BLOBs in
//! SQLite, timestamps RFC 3339 TEXT), so one macro body serves both concrete pools.

/// Implements [`super::Store`] for a store type with `read` and `write` pools of one driver.
/// Backend-specific trait items (`backend`, …) are passed in the braces.
macro_rules! impl_store {
    ($store:ty, { $($extra:item)* }) => {
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
                tx.commit().await?;
                Ok(())
            }

            async fn customer(&self, id: uuid::Uuid) -> Result<Option<$crate::store::CustomerRecord>, $crate::store::StoreError> {
                use sqlx::Row;
                let mut conn = self.read.acquire().await.map_err($crate::store::StoreError::Unavailable)?;
                let Some(row) = sqlx::query(
                    "SELECT id, region, kind, vip_level, status, version, kek_version, wrapped_key, \
                     created_at, updated_at FROM customers WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?
                else {
                    return Ok(None);
                };
                let fields = sqlx::query("SELECT field, sealed FROM customer_fields WHERE customer_id = $1 ORDER BY field")
                    .bind(id)
                    .fetch_all(&mut *conn)
                    .await?
                    .into_iter()
                    .map(|f| Ok($crate::store::SealedField { name: f.try_get("field")?, sealed: f.try_get("sealed")? }))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?;
                let kind: String = row.try_get("kind")?;
                let status: String = row.try_get("status")?;
                Ok(Some($crate::store::CustomerRecord {
                    id: row.try_get("id")?,
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
                    fields,
                }))
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
                tx.commit().await?;
                Ok($crate::store::UpdateOutcome::Updated)
            }
        }
    };
}

pub(crate) use impl_store;

//! Attachments: `raywatch attach` and `detach` as the core carries them out (a
//! followed path beyond the watched roots, remembered across restarts).

use anyhow::Result;

use super::clusters::Core;
use super::follow::Attachment;
use crate::api::{AttachRequest, AttachResponse, Refusal};
use crate::discovery::{self, DISCOVERY_FILE};
use crate::registry::Origin;

impl Core {
    fn save_attachments(&self) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(&self.follow.attachments)?;
        bytes.push(b'\n');
        crate::atomic::write(&self.home.attachments(), &bytes, 0o600)
    }

    pub fn attach(&mut self, req: AttachRequest) -> Result<AttachResponse, Refusal> {
        if let Some(n) = &req.name {
            crate::registry::validate_name(n)?;
        }
        let path = fs_err::canonicalize(&req.path).map_err(|e| {
            format!(
                "cannot attach {}: {e}; pass a Ray temp dir, a session dir or a discovery file",
                req.path.display()
            )
        })?;
        let path = if path.is_dir()
            && path
                .file_name()
                .is_some_and(|n| crate::ray::is_session_name(&n.to_string_lossy()))
        {
            path.join(DISCOVERY_FILE)
        } else {
            path
        };
        if let Some(n) = &req.name {
            let taken = self.registry.clusters().any(|c| {
                c.name == *n
                    && c.is_live()
                    && !(c.found.file == path || path.is_dir() && c.found.file.starts_with(&path))
            }) || self
                .follow
                .attachments
                .iter()
                .any(|a| a.name.as_deref() == Some(n) && a.path != path);
            if taken {
                return Err(Refusal::Invalid(format!(
                    "the name {n:?} is already used by another cluster; choose another --name"
                )));
            }
        }
        if !path.is_dir() {
            discovery::read_listing(&path, self.trusted())
                .map_err(|r| format!("cannot attach {}: it {r}", path.display()))?;
        }
        self.follow.attachments.retain(|a| a.path != path);
        self.follow.attachments.push(Attachment {
            path: path.clone(),
            name: req.name,
        });
        self.save_attachments()
            .map_err(|e| Refusal::Internal(format!("cannot save the attachments: {e:#}")))?;
        self.full_scan();
        let clusters = self
            .registry
            .clusters()
            .filter(|c| c.found.file == path || c.found.file.starts_with(&path))
            .map(|c| c.name.clone())
            .collect();
        Ok(AttachResponse { clusters })
    }

    pub fn detach(&mut self, name: &str) -> Result<(), Refusal> {
        let by_cluster = self
            .registry
            .by_name(name)
            .filter(|c| matches!(c.origin, Origin::Attached { .. }))
            .map(|c| c.found.file.clone());
        let before = self.follow.attachments.len();
        self.follow.attachments.retain(|a| {
            let named = a.name.as_deref() == Some(name);
            let covers = by_cluster.as_ref().is_some_and(|f| a.covers(f));
            !(named || covers)
        });
        if self.follow.attachments.len() == before {
            return Err(Refusal::NotFound(format!(
                "no attached cluster is named {name:?}; `raywatch status` lists clusters and their source"
            )));
        }
        self.save_attachments()
            .map_err(|e| Refusal::Internal(format!("cannot save the attachments: {e:#}")))?;
        self.full_scan();
        Ok(())
    }
}

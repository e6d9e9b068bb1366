//! The refreshes of `raywatch top`'s screen, fetched on a thread of their own (with a tokio
//! runtime of its own) so that keys and drawing never wait on Prometheus.

use std::sync::mpsc;
use std::time::Duration;

use anyhow::Result;

use super::{App, View, WINDOWS};
use crate::home::Home;
use crate::prometheus::Counted;
use crate::top::model::Key;
use crate::top::{self, Clusters, Detail, Source};

/// A request to the fetching thread.
pub(super) enum Request {
    Clusters { show_all: bool },
    Cluster { key: Key, window: Duration },
}

impl Request {
    /// What the view shown needs.
    pub(super) fn for_view(app: &App) -> Request {
        match &app.view {
            View::Clusters => Request::Clusters {
                show_all: app.show_all,
            },
            View::Cluster(key) => Request::Cluster {
                key: key.clone(),
                window: WINDOWS[app.window],
            },
        }
    }
}

pub(super) enum Reply {
    Clusters(Result<Clusters>),
    Cluster(Key, Result<Detail>),
}

/// The fetching thread's two ends.
pub(super) struct Fetcher {
    pub requests: mpsc::Sender<Request>,
    pub replies: mpsc::Receiver<Reply>,
}

/// What a refresh reads from, and how.
struct Reader {
    api: Counted,
    source: Source,
    home: Option<Home>,
    dead_for: Duration,
}

/// Starts the fetching thread; it ends when [`Fetcher`] is dropped.
pub(super) fn spawn(
    api: Counted,
    source: Source,
    home: Option<Home>,
    dead_for: Duration,
) -> std::io::Result<Fetcher> {
    let (req_tx, req_rx) = mpsc::channel::<Request>();
    let (rep_tx, rep_rx) = mpsc::channel::<Reply>();
    let reader = Reader {
        api,
        source,
        home,
        dead_for,
    };
    std::thread::Builder::new()
        .name("top-fetch".into())
        .spawn(move || reader.serve(&req_rx, &rep_tx))?;
    Ok(Fetcher {
        requests: req_tx,
        replies: rep_rx,
    })
}

impl Reader {
    /// Answers requests, only the newest of those waiting, until either end goes.
    fn serve(&self, requests: &mpsc::Receiver<Request>, replies: &mpsc::Sender<Reply>) {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        while let Ok(mut req) = requests.recv() {
            while let Ok(newer) = requests.try_recv() {
                req = newer;
            }
            let reply = match req {
                Request::Clusters { show_all } => {
                    Reply::Clusters(rt.block_on(self.clusters(show_all)))
                }
                Request::Cluster { key, window } => {
                    // The header line needs the clusters too.
                    let c = rt.block_on(self.clusters(false));
                    let d = rt.block_on(top::fetch_cluster(
                        &self.api,
                        &key,
                        window,
                        self.home.as_ref(),
                    ));
                    let _ = replies.send(Reply::Clusters(c));
                    Reply::Cluster(key, d)
                }
            };
            if replies.send(reply).is_err() {
                return;
            }
        }
    }

    async fn clusters(&self, show_all: bool) -> Result<Clusters> {
        top::fetch_clusters(&self.api, self.source, self.dead_for, show_all).await
    }
}

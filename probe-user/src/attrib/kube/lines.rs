//! A bound on what one response line from the API server may cost in memory. kube-rs reads
//! a list response whole and a watch stream line by line with no limit; a line (a list
//! page is one JSON line, a watch event is one) longer than the bound fails the response
//! instead of growing a buffer without end. The watcher counts that as an error and retries.
//!
//! It also counts the complete lines received: kube's watcher keeps bookmarks to itself,
//! so lines are how the source tells that a watch that failed is flowing again.
use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use hyper::{
    body::{Body, Frame, SizeHint},
    Response,
};
use kube::client::DynBody;
use tower::{util::MapResponseLayer, BoxError};

/// The body of every response, bounded.
pub struct LineBounded {
    inner: Box<DynBody>,
    max_line: usize,
    /// Bytes since the last newline.
    open: usize,
    /// Complete lines received, over all responses.
    lines: Arc<AtomicU64>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the API server sent more than {0} bytes without a line break (a list page or watch \
     event that large is not a pod list); the response is dropped"
)]
pub struct LineTooLong(usize);

impl Body for LineBounded {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let mut newlines = 0;
                let mut last = None;
                for (at, _) in data.iter().enumerate().filter(|(_, &b)| b == b'\n') {
                    newlines += 1;
                    last = Some(at);
                }
                this.lines.fetch_add(newlines, Ordering::Relaxed);
                this.open = match last {
                    Some(at) => data.len() - at - 1,
                    None => this.open.saturating_add(data.len()),
                };
                if this.open > this.max_line {
                    return Poll::Ready(Some(Err(Box::new(LineTooLong(this.max_line)))));
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The layer for kube's `ClientBuilder::with_layer`; `lines` counts the lines received.
pub fn layer(
    max_line: usize,
    lines: Arc<AtomicU64>,
) -> MapResponseLayer<impl Fn(Response<Box<DynBody>>) -> Response<Box<DynBody>> + Clone> {
    MapResponseLayer::new(move |response: Response<Box<DynBody>>| {
        response.map(|inner| {
            Box::new(LineBounded {
                inner,
                max_line,
                open: 0,
                lines: lines.clone(),
            }) as Box<DynBody>
        })
    })
}

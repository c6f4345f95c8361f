//! The row filter typed after `/`: space-separated terms, all of which must hold.
//!
//! `ns=shop` `pod=cart` `svc=cart` `port=8080` `proto=grpc|h2|http|tls|tcp`
//! `status=5xx|4xx|2xx|err|none`, and bare words matched against the row's name.
//! Names match by substring. A row of an aggregate matches when what it has seen
//! matches (a service row passes `status=5xx` when it served a 5xx in the window).

use super::state::{Attrs, PROTO_GRPC, PROTO_HTTP1, PROTO_HTTP2, PROTO_TCP, PROTO_TLS};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub text: String,
    ns: Vec<String>,
    pod: Vec<String>,
    svc: Vec<String>,
    port: Vec<u16>,
    proto: u8,
    /// Bits of `Counts::status_mask`; bit 6 means "any error class" (5xx or none).
    status: u8,
    words: Vec<String>,
}

impl Filter {
    /// Parse; an unknown key or a bad value is an error shown to the user.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut f = Filter {
            text: text.trim().to_string(),
            ..Filter::default()
        };
        for term in text.split_whitespace() {
            let Some((k, v)) = term.split_once('=') else {
                f.words.push(term.to_lowercase());
                continue;
            };
            let v = v.to_lowercase();
            match k {
                "ns" | "namespace" => f.ns.push(v),
                "pod" => f.pod.push(v),
                "svc" | "service" => f.svc.push(v),
                "port" => f.port.push(
                    v.parse()
                        .map_err(|_| format!("port {v:?} is not a number"))?,
                ),
                "proto" | "protocol" => {
                    f.proto |= match v.as_str() {
                        "grpc" => PROTO_GRPC,
                        "h2" | "http2" => PROTO_HTTP2,
                        "http" | "http1" => PROTO_HTTP1,
                        "tls" => PROTO_TLS,
                        "tcp" => PROTO_TCP,
                        _ => return Err(format!("proto {v:?}: grpc, h2, http, tls or tcp")),
                    }
                }
                "status" => {
                    f.status |= match v.as_str() {
                        "1xx" => 1 << 1,
                        "2xx" => 1 << 2,
                        "3xx" => 1 << 3,
                        "4xx" => 1 << 4,
                        "5xx" => 1 << 5,
                        "none" => 1,
                        "err" | "error" => (1 << 5) | 1,
                        _ => return Err(format!("status {v:?}: 2xx, 4xx, 5xx, err, none")),
                    }
                }
                _ => {
                    return Err(format!(
                        "unknown filter key {k:?}: ns, pod, svc, port, proto, status"
                    ))
                }
            }
        }
        Ok(f)
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Does a row with these attributes, status classes and name pass?
    pub fn matches(&self, a: &Attrs, status_mask: u8, name: Option<&str>) -> bool {
        let any = |want: &[String], have: &[String]| {
            want.is_empty()
                || want
                    .iter()
                    .any(|w| have.iter().any(|h| h.to_lowercase().contains(w.as_str())))
        };
        if !any(&self.ns, &a.namespaces) || !any(&self.pod, &a.pods) || !any(&self.svc, &a.services)
        {
            return false;
        }
        if !self.port.is_empty() && !self.port.iter().any(|p| a.ports.contains(p)) {
            return false;
        }
        if self.proto != 0 && a.protos & self.proto == 0 {
            return false;
        }
        if self.status != 0 && status_mask & self.status == 0 {
            return false;
        }
        if !self.words.is_empty() {
            let hay = format!(
                "{} {} {} {}",
                name.unwrap_or(""),
                a.namespaces.join(" "),
                a.pods.join(" "),
                a.services.join(" ")
            )
            .to_lowercase();
            if !self.words.iter().all(|w| hay.contains(w.as_str())) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs() -> Attrs {
        Attrs {
            namespaces: vec!["shop".into()],
            pods: vec!["cart-0".into(), "web-0".into()],
            services: vec!["cart.shop".into()],
            ports: vec![8080],
            protos: PROTO_HTTP1 | PROTO_TCP,
        }
    }

    #[test]
    fn every_key_filters() {
        let a = attrs();
        let m = |s: &str, mask: u8| {
            Filter::parse(s)
                .unwrap()
                .matches(&a, mask, Some("cart.shop"))
        };
        assert!(m("", 0));
        assert!(m("ns=shop", 0) && !m("ns=pay", 0));
        assert!(m("pod=cart", 0) && !m("pod=payment", 0));
        assert!(m("svc=cart", 0) && !m("svc=payment", 0));
        assert!(m("port=8080", 0) && !m("port=9090", 0));
        assert!(m("proto=http", 0) && !m("proto=grpc", 0));
        assert!(m("status=5xx", 1 << 5) && !m("status=5xx", 1 << 2));
        assert!(m("status=err", 1) && m("status=2xx status=5xx", 1 << 2));
        assert!(m("CART", 0) && !m("payment", 0));
        assert!(m("ns=shop port=8080 cart", 0) && !m("ns=shop port=1", 0));
    }

    #[test]
    fn bad_terms_are_errors() {
        assert!(Filter::parse("port=http").is_err());
        assert!(Filter::parse("proto=smtp").is_err());
        assert!(Filter::parse("colour=red")
            .unwrap_err()
            .contains("unknown filter key"));
    }
}

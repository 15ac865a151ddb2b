//! A browser on the device verification page, driven over HTTP: keeps its cookies, reads the
//! CSRF token of the page's forms, signs in and decides.

use std::collections::HashMap;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, SET_COOKIE};

use super::TestServer;

/// A browser on the verification page: keeps its cookies, sends its forms.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    pub cookies: HashMap<String, String>,
}

pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub html: String,
}

impl Browser {
    pub fn new(s: &TestServer) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: s.url(""),
            cookies: HashMap::new(),
        }
    }

    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub async fn take(&mut self, resp: reqwest::Response) -> Page {
        for v in resp.headers().get_all(SET_COOKIE) {
            let v = v.to_str().unwrap();
            assert!(
                v.contains("HttpOnly") && v.contains("SameSite=Strict"),
                "{v}"
            );
            let (kv, _) = v.split_once(';').unwrap();
            let (k, val) = kv.split_once('=').unwrap();
            if val.is_empty() {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.into(), val.into());
            }
        }
        Page {
            status: resp.status(),
            headers: resp.headers().clone(),
            html: resp.text().await.unwrap(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.take(resp).await
    }

    /// The CSRF token the page's forms carry.
    pub fn csrf(page: &Page) -> String {
        let at = page
            .html
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token");
        let rest = &page.html[at + 19..];
        rest[..rest.find('"').unwrap()].to_owned()
    }

    pub async fn post(&mut self, fields: &[(&str, &str)], origin: Option<&str>) -> Page {
        let mut req = self
            .http
            .post(format!("{}/device", self.base))
            .header("cookie", self.cookie_header())
            .form(fields);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let resp = req.send().await.unwrap();
        self.take(resp).await
    }

    /// Signs in with `key` from the page for `code`; follows the redirect.
    pub async fn sign_in(&mut self, key: &str, code: &str) -> Page {
        let page = self.get(&format!("/device?user_code={code}")).await;
        let csrf = Browser::csrf(&page);
        let r = self
            .post(
                &[
                    ("action", "signin"),
                    ("csrf", &csrf),
                    ("api_key", key),
                    ("user_code", code),
                ],
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.html);
        let to = r.headers["location"].to_str().unwrap().to_owned();
        self.get(&to).await
    }

    pub async fn decide(&mut self, page: &Page, code: &str, action: &str) -> Page {
        let csrf = Browser::csrf(page);
        self.post(
            &[("action", action), ("csrf", &csrf), ("user_code", code)],
            None,
        )
        .await
    }
}

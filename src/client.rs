//! The CLI's side of the API: `memesh login` (the device authorization flow of RFC 8628 against
//! a memesh server), `memesh logout` and `memesh whoami`, and the credentials file they share.
//! The key is stored in the user's config directory (`$MEMESH_CONFIG_DIR`, else
//! `$XDG_CONFIG_HOME/memesh`, else `~/.config/memesh`) in `credentials.json`, readable by its
//! owner only (0600, in a 0700 directory), written atomically.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The OAuth client id the CLI signs in as.
pub const CLI_CLIENT_ID: &str = "memesh-cli";
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// What `memesh login` stores.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    pub server: String,
    pub api_key: String,
    pub key_id: Option<String>,
    pub client_id: String,
    pub scope: String,
}

/// Where the credentials live.
pub fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("MEMESH_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("memesh"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow!("neither MEMESH_CONFIG_DIR, XDG_CONFIG_HOME nor HOME is set"))?;
    Ok(PathBuf::from(home).join(".config").join("memesh"))
}

fn credentials_path() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join("credentials.json"))
}

pub fn load() -> anyhow::Result<Option<Credentials>> {
    let path = credentials_path()?;
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("{} is not a memesh credentials file", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the file with mode 0600 (a temporary file renamed over the old one).
fn store(creds: &Credentials) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let dir = config_dir()?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("credentials.json");
    let tmp = dir.join(".credentials.json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(&serde_json::to_vec_pretty(creds)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

fn http() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()?)
}

fn endpoint(server: &str, path: &str) -> String {
    format!("{}{path}", server.trim_end_matches('/'))
}

/// The OAuth error of a 400 answer, or a description of any other failure.
async fn oauth_error(resp: reqwest::Response) -> (String, String) {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    match body["error"].as_str() {
        Some(e) => (
            e.to_owned(),
            body["error_description"].as_str().unwrap_or("").to_owned(),
        ),
        None => ("http_error".into(), format!("the server answered {status}")),
    }
}

/// `memesh login`: asks the server for a device code, shows the person where to approve it,
/// polls at the interval the server sets (five seconds more after each `slow_down`), and stores
/// the key it receives.
pub async fn login(server: &str, scope: Option<&str>) -> anyhow::Result<Credentials> {
    let http = http()?;
    let mut form = vec![("client_id", CLI_CLIENT_ID)];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    let resp = http
        .post(endpoint(server, "/v1/auth/device"))
        .form(&form)
        .send()
        .await
        .with_context(|| format!("reaching {server}"))?;
    if !resp.status().is_success() {
        let (e, d) = oauth_error(resp).await;
        bail!("the server refused to start a login: {e}: {d}");
    }
    let start: Value = resp.json().await?;
    let field = |name: &str| {
        start[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the server's answer lacks {name}"))
    };
    let (device_code, user_code) = (field("device_code")?, field("user_code")?);
    let link = field("verification_uri_complete").or_else(|_| field("verification_uri"))?;
    let mut interval = start["interval"].as_u64().unwrap_or(5).max(1);
    let expires_in = start["expires_in"].as_u64().unwrap_or(600);
    eprintln!("To sign in, open this page in a browser:\n\n    {link}\n");
    eprintln!("and check that it shows the code:  {user_code}\n");
    eprintln!(
        "Waiting for approval (the code expires in {} minutes)…",
        expires_in.div_ceil(60)
    );
    loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        let resp = http
            .post(endpoint(server, "/v1/auth/device/token"))
            .form(&[
                ("grant_type", DEVICE_GRANT),
                ("device_code", device_code.as_str()),
                ("client_id", CLI_CLIENT_ID),
            ])
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                eprintln!("memesh: the server did not answer ({e}); trying again");
                continue;
            }
        };
        if resp.status().is_success() {
            let token: Value = resp.json().await?;
            let creds = Credentials {
                server: server.trim_end_matches('/').to_owned(),
                api_key: token["access_token"]
                    .as_str()
                    .ok_or_else(|| anyhow!("the server's token answer lacks access_token"))?
                    .to_owned(),
                key_id: token["key_id"].as_str().map(str::to_owned),
                client_id: CLI_CLIENT_ID.to_owned(),
                scope: token["scope"].as_str().unwrap_or("").to_owned(),
            };
            let path = store(&creds)?;
            eprintln!("Signed in. The key is stored in {}", path.display());
            return Ok(creds);
        }
        match oauth_error(resp).await {
            (e, _) if e == "authorization_pending" => {}
            (e, _) if e == "slow_down" => interval += 5,
            (e, _) if e == "access_denied" => bail!("the login was denied on the page"),
            (e, _) if e == "expired_token" => {
                bail!("the code expired before it was approved; run memesh login again")
            }
            (e, d) => bail!("the login failed: {e}: {d}"),
        }
    }
}

fn stored() -> anyhow::Result<Credentials> {
    load()?.ok_or_else(|| anyhow!("not signed in: run memesh login --server URL"))
}

/// `memesh whoami`: the stored key's server, user, tenant, role and scopes, as the server says.
pub async fn whoami() -> anyhow::Result<Value> {
    let creds = stored()?;
    let resp = http()?
        .get(endpoint(&creds.server, "/v1/auth/whoami"))
        .header("x-api-key", &creds.api_key)
        .send()
        .await
        .with_context(|| format!("reaching {}", creds.server))?;
    let status = resp.status();
    let mut body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "{} refused the stored key ({status}): {}",
            creds.server,
            body["error"]["message"].as_str().unwrap_or("")
        );
    }
    body["server"] = Value::String(creds.server);
    Ok(body)
}

/// `memesh logout`: revokes the stored key on the server, then removes it. A key the server no
/// longer accepts is removed all the same.
pub async fn logout() -> anyhow::Result<String> {
    let creds = stored()?;
    let resp = http()?
        .post(endpoint(&creds.server, "/v1/auth/logout"))
        .header("x-api-key", &creds.api_key)
        .send()
        .await
        .with_context(|| format!("reaching {} (the key stays stored)", creds.server))?;
    let status = resp.status();
    if !status.is_success() && status != reqwest::StatusCode::UNAUTHORIZED {
        bail!(
            "{} did not revoke the key ({status}); it stays stored",
            creds.server
        );
    }
    remove(&credentials_path()?)?;
    Ok(creds.server)
}

fn remove(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

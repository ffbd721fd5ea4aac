//! Authentication during startup: trust, cleartext, md5 and SCRAM-SHA-256.

use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::{message_name, server_error, unexpected, Backend, PgConnection};
use crate::config::ConnectOptions;
use crate::error::{AuthFailure, Error};

impl PgConnection {
    /// Answers the server's authentication requests until it accepts or refuses.
    pub(super) async fn authenticate(&mut self, opts: &ConnectOptions) -> Result<(), Error> {
        let auth_error = |failure| Error::Auth {
            user: opts.user.clone(),
            failure,
        };
        let password = || {
            opts.password
                .as_deref()
                .ok_or_else(|| auth_error(AuthFailure::PasswordMissing))
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let message = match self.read_message().await? {
                Backend::Message(m) => m,
                other => return Err(unexpected("authentication", &other)),
            };
            match message {
                Message::AuthenticationOk => return Ok(()),
                Message::AuthenticationCleartextPassword => {
                    let pw = password()?;
                    frontend::password_message(pw.as_bytes(), &mut self.write_buf)
                        .map_err(|e| self.io(e))?;
                    self.flush().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let pw = password()?;
                    let hash = md5_hash(opts.user.as_bytes(), pw.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.write_buf)
                        .map_err(|e| self.io(e))?;
                    self.flush().await?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut offers_scram = false;
                    while let Some(m) = mechanisms.next().map_err(|e| self.io(e))? {
                        offers_scram |= m == SCRAM_SHA_256;
                    }
                    if !offers_scram {
                        return Err(auth_error(AuthFailure::UnsupportedMethod(
                            "a SASL mechanism other than SCRAM-SHA-256".to_owned(),
                        )));
                    }
                    // No channel binding: we announce that we do not support it ('n'),
                    // which servers accept with or without TLS.
                    let client =
                        ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        SCRAM_SHA_256,
                        client.message(),
                        &mut self.write_buf,
                    )
                    .map_err(|e| self.io(e))?;
                    self.flush().await?;
                    scram = Some(client);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let client = scram
                        .as_mut()
                        .ok_or_else(|| Error::protocol("SASL continue before SASL start"))?;
                    client
                        .update(body.data())
                        .map_err(|e| auth_error(AuthFailure::Scram(e.to_string())))?;
                    frontend::sasl_response(client.message(), &mut self.write_buf)
                        .map_err(|e| self.io(e))?;
                    self.flush().await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let client = scram
                        .as_mut()
                        .ok_or_else(|| Error::protocol("SASL final before SASL start"))?;
                    client.finish(body.data()).map_err(|e| {
                        auth_error(AuthFailure::Scram(format!(
                            "the server's signature is invalid: {e}"
                        )))
                    })?;
                }
                Message::ErrorResponse(body) => {
                    let error = server_error(body.fields());
                    return Err(if error.code.starts_with("28") {
                        auth_error(AuthFailure::Rejected(Box::new(error)))
                    } else {
                        Error::Server {
                            during: "authentication".to_owned(),
                            error: Box::new(error),
                        }
                    });
                }
                Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGss
                | Message::AuthenticationSspi
                | Message::AuthenticationGssContinue(_) => {
                    return Err(auth_error(AuthFailure::UnsupportedMethod(
                        "Kerberos, GSSAPI or SSPI".to_owned(),
                    )))
                }
                other => {
                    return Err(Error::protocol(format!(
                        "unexpected message during authentication: {}",
                        message_name(&other)
                    )))
                }
            }
        }
    }
}

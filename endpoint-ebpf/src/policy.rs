//! Policy: acceptance is enforced on every packet, not only at connection setup, so an
//! endpoint that stops being `available` stops carrying traffic at once.

use endpoint_common::{
    counter,
    maps::{Endpoint, state},
};

use crate::outcome::Outcome;

#[inline(always)]
pub fn admit(endpoint: &Endpoint) -> Result<(), Outcome> {
    if endpoint.state == state::AVAILABLE {
        Ok(())
    } else {
        Err(Outcome::drop_for(
            counter::drop_for_state(endpoint.state),
            endpoint.id,
        ))
    }
}

//! NVMe completion status: status code type + status code, and the DNR bit.

/// A completion status (the CQE status field without the phase bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// Status Code Type (0 generic, 1 command specific, 2 media and data integrity, 3 path).
    pub sct: u8,
    /// Status Code.
    pub sc: u8,
    /// Do Not Retry.
    pub dnr: bool,
}

macro_rules! statuses {
    ($($name:ident = ($sct:expr, $sc:expr, $dnr:expr);)*) => {
        impl Status { $(pub const $name: Status = Status { sct: $sct, sc: $sc, dnr: $dnr };)* }
    };
}

statuses! {
    SUCCESS = (0, 0x00, false);
    INVALID_OPCODE = (0, 0x01, true);
    INVALID_FIELD = (0, 0x02, true);
    CID_CONFLICT = (0, 0x03, true);
    DATA_TRANSFER_ERROR = (0, 0x04, false);
    INTERNAL_ERROR = (0, 0x06, false);
    ABORTED_BY_REQUEST = (0, 0x07, false);
    ABORTED_SQ_DELETION = (0, 0x08, false);
    INVALID_NAMESPACE = (0, 0x0B, true);
    COMMAND_SEQUENCE_ERROR = (0, 0x0C, true);
    INVALID_SGL_DESCRIPTOR = (0, 0x0D, true);
    DATA_SGL_LENGTH_INVALID = (0, 0x0F, true);
    SGL_DESCRIPTOR_TYPE_INVALID = (0, 0x11, true);
    SGL_OFFSET_INVALID = (0, 0x16, true);
    SGL_SUBTYPE_INVALID = (0, 0x17, true);
    TRANSIENT_TRANSPORT_ERROR = (0, 0x22, false);
    LBA_OUT_OF_RANGE = (0, 0x80, true);
    NAMESPACE_NOT_READY = (0, 0x82, false);
    INVALID_QUEUE_IDENTIFIER = (1, 0x01, true);
    INVALID_QUEUE_SIZE = (1, 0x02, true);
    ASYNC_EVENT_REQUEST_LIMIT = (1, 0x05, true);
    INVALID_LOG_PAGE = (1, 0x09, true);
    FEATURE_NOT_CHANGEABLE = (1, 0x0E, true);
    CONNECT_INCOMPATIBLE_FORMAT = (1, 0x80, true);
    CONNECT_CONTROLLER_BUSY = (1, 0x81, false);
    CONNECT_INVALID_PARAMETERS = (1, 0x82, true);
    CONNECT_INVALID_HOST = (1, 0x84, true);
    AUTH_REQUIRED = (1, 0x91, true);
    WRITE_FAULT = (2, 0x80, false);
    UNRECOVERED_READ_ERROR = (2, 0x81, false);
    COMPARE_FAILURE = (2, 0x85, true);
}

impl Status {
    /// Decodes a CQE status field (bit 0, the phase tag, is ignored).
    pub fn from_field(f: u16) -> Status {
        Status {
            sc: (f >> 1) as u8,
            sct: ((f >> 9) & 0x7) as u8,
            dnr: f & 0x8000 != 0,
        }
    }
    /// Encodes into a CQE status field with phase 0.
    pub fn to_field(self) -> u16 {
        (u16::from(self.sc) << 1) | (u16::from(self.sct & 0x7) << 9) | if self.dnr { 0x8000 } else { 0 }
    }
    pub fn is_success(self) -> bool {
        self.sct == 0 && self.sc == 0
    }
    /// Compares type and code only (DNR differs between otherwise equal statuses).
    pub fn same_code(self, other: Status) -> bool {
        self.sct == other.sct && self.sc == other.sc
    }
}

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "sct={:#x} sc={:#04x}{}",
            self.sct,
            self.sc,
            if self.dnr { " dnr" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_field_round_trip() {
        let s = Status::LBA_OUT_OF_RANGE;
        assert_eq!(s.to_field(), (0x80 << 1) | 0x8000);
        assert_eq!(Status::from_field(s.to_field() | 1), s);
        let c = Status::CONNECT_INVALID_HOST;
        assert_eq!(c.to_field() & 0x0E00, 1 << 9);
        assert!(Status::SUCCESS.is_success());
        assert!(!c.is_success());
    }
}

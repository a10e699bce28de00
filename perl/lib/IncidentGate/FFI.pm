package IncidentGate::FFI;
# The binding of libincident_gate.so's C ABI (include/incident_gate.h, src/ffi.rs) through
# FFI::Platypus: no XS of our own. Every call answers a status; on anything but IG_OK the
# library's thread-local last error says why, and this binding hands it back with the status.
use v5.20;
use warnings;
use feature 'signatures';
no warnings 'experimental::signatures';

use Encode ();
use Exporter 'import';

# enum ig_status, in the order of src/ffi.rs
our @STATUS;
BEGIN {
    @STATUS = qw(IG_OK IG_NULL_ARGUMENT IG_INVALID_UTF8 IG_INVALID_JSON IG_INVALID_ARGUMENT
      IG_INVALID_CONFIG IG_UNKNOWN_EVENT IG_INVALID_EVENT IG_QUEUE_FULL IG_TIMEOUT IG_UNAVAILABLE IG_PANIC
      IG_OPENQA_REFUSED);
}
use constant {map { $STATUS[$_] => $_ } 0 .. $#STATUS};
our @EXPORT_OK = (@STATUS, 'status_name');
our %EXPORT_TAGS = (status => [@STATUS, 'status_name']);

sub status_name ($status) { $STATUS[$status] // "unknown status $status" }

# Loads the library; dies with one line naming the file and the loader's reason.
sub new ($class, $library) {
    # loaded here, not at compile time: without FFI::Platypus the plugin stays inactive with this
    # reason instead of keeping openQA from starting
    eval { require FFI::Platypus; FFI::Platypus->VERSION(2.00); require FFI::Platypus::DL; 1 }
      or die 'FFI::Platypus 2 is not installed (perl-FFI-Platypus, libffi-platypus-perl): '
      . ($@ =~ s/\n.*//sr) . "\n";
    die "incident-gate library $library does not exist\n" unless -e $library;
    my $handle = FFI::Platypus::DL::dlopen($library, FFI::Platypus::DL::RTLD_PLATYPUS_DEFAULT())
      or die "cannot load incident-gate library $library: " . (FFI::Platypus::DL::dlerror() // 'unknown error') . "\n";
    FFI::Platypus::DL::dlclose($handle);
    my $ffi = FFI::Platypus->new(api => 2, lib => [$library]);
    die "$library is not libincident_gate (no ig_version)\n" unless $ffi->find_symbol('ig_version');
    $ffi->type('(opaque, int, string)->void' => 'ig_log_callback');
    my %f = (
        gate_new => $ffi->function(ig_gate_new => ['string', 'opaque*'] => 'int'),
        submit => $ffi->function(ig_gate_submit => ['opaque', 'string', 'string'] => 'int'),
        evaluate => $ffi->function(ig_gate_evaluate => ['opaque', 'uint64', 'opaque*'] => 'int'),
        evaluate_submission =>
          $ffi->function(ig_gate_evaluate_submission => ['opaque', 'string', 'opaque*'] => 'int'),
        status => $ffi->function(ig_gate_status => ['opaque', 'opaque*'] => 'int'),
        incidents => $ffi->function(ig_gate_incidents => ['opaque', 'string', 'opaque*'] => 'int'),
        flush => $ffi->function(ig_gate_flush => ['opaque', 'uint32'] => 'int'),
        free => $ffi->function(ig_gate_free => ['opaque'] => 'void'),
        string_free => $ffi->function(ig_string_free => ['opaque'] => 'void'),
        last_error => $ffi->function(ig_last_error => [] => 'string'),
        version => $ffi->function(ig_version => [] => 'string'),
        set_log_callback => $ffi->function(ig_set_log_callback => ['ig_log_callback', 'opaque'] => 'int'),
        log_poll => $ffi->function(ig_log_poll => [] => 'int'),
        metrics => $ffi->function(ig_gate_metrics => ['opaque', 'opaque*'] => 'int'),
    );
    return bless {ffi => $ffi, f => \%f, library => $library}, $class;
}

sub library ($self) { $self->{library} }
sub version ($self) { $self->{f}{version}->call }
sub last_error ($self) { $self->{f}{last_error}->call // '' }

# enum ig_log_level → Mojo::Log's levels
our @LOG_LEVELS = (undef, qw(error warn info debug trace));

# Hands the library's log lines to $sub->($level, $message) ($level as Mojo::Log names it, $message
# as characters) instead of stderr, for the whole process; undef: back to stderr. The library calls
# it only on this thread, inside any call into it (and log_poll), never from its own threads.
sub on_log ($self, $sub) {
    my $closure = $sub && $self->{ffi}->closure(
        sub ($userdata, $level, $message) {
            # the library's lines are UTF-8 bytes; Mojo::Log and the like want characters
            $message = Encode::decode('UTF-8', $message // '');
            eval { $sub->($LOG_LEVELS[$level] // 'info', $message); 1 } or warn "IncidentGate log: $@";
        });
    my $status = $self->{f}{set_log_callback}->call($closure, undef);
    $self->{log_closure} = $closure;    # the library holds its address: keep it alive
    return $status;
}

# Delivers the log lines waiting for the callback (call it from a timer).
sub log_poll ($self) { $self->{f}{log_poll}->call }

# A new gate from a JSON configuration: (IncidentGate::FFI::Gate, undef) or (undef, $status, $error).
sub gate ($self, $config_json) {
    my $status = $self->{f}{gate_new}->call($config_json, \my $ptr);
    return (undef, $status, $self->last_error) if $status != IG_OK;
    return bless({lib => $self, ptr => $ptr, pid => $$}, 'IncidentGate::FFI::Gate');
}

# Reads a string the library returned and frees it with ig_string_free.
sub _take_string ($self, $ptr) {
    return undef unless $ptr;
    my $text = $self->{ffi}->cast(opaque => 'string', $ptr);
    $self->{f}{string_free}->call($ptr);
    return $text;
}

package IncidentGate::FFI::Gate;
use v5.20;
use warnings;
use feature 'signatures';
no warnings 'experimental::signatures';

sub _fail ($self, $status) { ($status, $self->{lib}->last_error) }

# Queues an event (never blocks): (IG_OK) or ($status, $error).
sub submit ($self, $name, $json) {
    my $status = $self->{lib}{f}{submit}->call($self->{ptr}, $name, $json);
    return $status == 0 ? (0) : $self->_fail($status);
}

# Blocking: (IG_OK, $verdict_json) or ($status, $error).
sub evaluate ($self, $incident) {
    my $status = $self->{lib}{f}{evaluate}->call($self->{ptr}, $incident, \my $out);
    return $status == 0 ? (0, $self->{lib}->_take_string($out)) : $self->_fail($status);
}

# Blocking, for a submission named "12345", "ibs:12345" or "git:124": as evaluate.
sub evaluate_submission ($self, $submission) {
    my $status = $self->{lib}{f}{evaluate_submission}->call($self->{ptr}, $submission, \my $out);
    return $status == 0 ? (0, $self->{lib}->_take_string($out)) : $self->_fail($status);
}

# (IG_OK, $status_json) or ($status, $error).
sub status ($self) {
    my $status = $self->{lib}{f}{status}->call($self->{ptr}, \my $out);
    return $status == 0 ? (0, $self->{lib}->_take_string($out)) : $self->_fail($status);
}

# The incidents the state directory knows, for a JSON query ({state, search, incident, limit}):
# (IG_OK, $list_json) or ($status, $error).
sub incidents ($self, $query_json) {
    my $status = $self->{lib}{f}{incidents}->call($self->{ptr}, $query_json, \my $out);
    return $status == 0 ? (0, $self->{lib}->_take_string($out)) : $self->_fail($status);
}

# The metrics in InfluxDB line protocol: (IG_OK, $lines) or ($status, $error).
sub metrics ($self) {
    my $status = $self->{lib}{f}{metrics}->call($self->{ptr}, \my $out);
    return $status == 0 ? (0, $self->{lib}->_take_string($out)) : $self->_fail($status);
}

# Waits until the gate is idle: (IG_OK) or ($status, $error), e.g. IG_TIMEOUT.
sub flush ($self, $timeout_ms) {
    my $status = $self->{lib}{f}{flush}->call($self->{ptr}, $timeout_ms);
    return $status == 0 ? (0) : $self->_fail($status);
}

# Stops the engine (at most two seconds) in the process that started it, and frees the gate. Not
# at global destruction: the library may already be unloaded then, and the process ends anyway.
sub DESTROY ($self) {
    return if ${^GLOBAL_PHASE} eq 'DESTRUCT';
    my $ptr = delete $self->{ptr} or return;
    $self->{lib}{f}{free}->call($ptr);
}

1;

# The FFI binding against the real library: status codes as in the generated header, every
# function, strings returned by the library read and freed, errors with their message.
use v5.20;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib", "$FindBin::Bin/../lib";
use IGTest qw(library tempdir);
use IncidentGate::FFI qw(:status);
use Mojo::File 'path';
use Mojo::JSON qw(decode_json encode_json);

subtest 'status constants match include/incident_gate.h' => sub {
    my $header = path($FindBin::Bin, '..', '..', 'include', 'incident_gate.h')->slurp;
    my ($statuses) = $header =~ /typedef enum ig_status \{(.*?)\}/s;
    my %c = $statuses =~ /^\s*(IG_[A-Z0-9_]+) = (\d+),/mg;
    ok keys %c >= 12, 'the header lists the statuses' or diag $header;
    is_deeply {map { $_ => IncidentGate::FFI->can($_)->() } keys %c}, \%c, 'same names, same values';
    is_deeply [sort keys %c], [sort @IncidentGate::FFI::STATUS], 'and no status missing here';
    is status_name(IG_QUEUE_FULL), 'IG_QUEUE_FULL', 'status_name';
    is status_name(99), 'unknown status 99', 'status_name of an unknown status';
};

my $lib = IncidentGate::FFI->new(library());
like $lib->version, qr/^\d+\.\d+\.\d+/, 'ig_version';
is $lib->library, library(), 'library path kept';

subtest 'ig_gate_new' => sub {
    my ($gate, $status, $error) = $lib->gate('{"concurrency":"many"}');
    is $gate, undef, 'no gate for an invalid config';
    is $status, IG_INVALID_CONFIG, 'IG_INVALID_CONFIG';
    like $error, qr/`concurrency`/, 'ig_last_error names the key';
    is $lib->last_error, $error, 'last_error is the same message';
    (undef, $status, $error) = $lib->gate('{"openqa_url":');
    is $status, IG_INVALID_JSON, 'IG_INVALID_JSON for broken JSON';
    like $error, qr/JSON/, 'with a message';
    (undef, $status) = $lib->gate("{\"openqa_url\":\"http://\xff\"}");
    is $status, IG_INVALID_UTF8, 'IG_INVALID_UTF8 for bytes that are no UTF-8';
};

my $state = tempdir(CLEANUP => 1);
# nothing listens on port 9 of the loopback: asking openQA fails at once
my $config = encode_json({openqa_url => 'http://127.0.0.1:9', state_dir => $state, publish_amqp => 'false',
    report_obs => 'false', obs_password => 'S3CRET-OBS'});
# the engine's threads start with the first event and end with ig_gate_free
sub threads { scalar(() = glob "/proc/$$/task/*") }
my $threads_before = threads();
my $gate = $lib->gate($config);
isa_ok $gate, 'IncidentGate::FFI::Gate';

subtest 'ig_gate_submit' => sub {
    my ($status, $error) = $gate->submit('openqa_worker_status', '{"id":1}');
    is $status, IG_UNKNOWN_EVENT, 'IG_UNKNOWN_EVENT';
    like $error, qr/openqa_worker_status/, 'naming the event';
    ($status, $error) = $gate->submit('openqa_job_done', '{"id":');
    is $status, IG_INVALID_JSON, 'IG_INVALID_JSON';
    ($status, $error) = $gate->submit('openqa_job_done', '{"result":"passed"}');
    is $status, IG_INVALID_EVENT, 'IG_INVALID_EVENT';
    like $error, qr/id/, 'saying what is missing';
    ($status, $error) = $gate->submit('openqa_job_done', '{"id":7,"newbuild":null,"reason":null,"result":"passed"}');
    is $status, IG_OK, 'a recorded job_done is taken';
    is $error, undef, 'without an error';
    is(($gate->submit('openqa_job_restart', '{"auto":0,"id":"2","result":{"2":12}}'))[0], IG_OK, 'a restart');
    is(($gate->submit('openqa_comment_create', '{"id":1,"job_id":10}'))[0], IG_OK, 'a comment');
};

subtest 'ig_gate_status' => sub {
    my ($status, $json) = $gate->status;
    is $status, IG_OK, 'IG_OK';
    my $s = decode_json($json);
    is $s->{pid}, $$, 'this process';
    is $s->{intake}{accepted}, 3, 'three events taken';
    is $s->{intake}{rejected}{unknown_event}, 1, 'one unknown';
    is $s->{intake}{rejected}{invalid_json}, 1, 'one not JSON';
    is $s->{intake}{rejected}{invalid_shape}, 1, 'one of a bad shape';
    is $s->{config}{obs_password}, '<redacted>', 'secrets redacted';
    unlike $json, qr/S3CRET/, 'nowhere in the status';
};

subtest 'ig_set_log_callback, ig_log_poll' => sub {
    my @lines;
    is $lib->on_log(sub { push @lines, [@_] }), IG_OK, 'callback registered';
    # root may write anywhere, but not into /proc: the engine cannot start there
    my $broken = $lib->gate(encode_json({openqa_url => 'http://127.0.0.1:9', state_dir => '/proc/self'}));
    my ($status, $error) = $broken->submit('openqa_job_done', '{"id":1,"result":"passed"}');
    is $status, IG_UNAVAILABLE, 'an engine that cannot start refuses the event';
    like $error, qr{/proc/self/incident-gate\.sqlite}, 'naming the file';
    is scalar @lines, 1, 'one line reached the callback before submit returned';
    is $lines[0][0], 'error', 'as an error';
    like $lines[0][1], qr{^the engine cannot start: .*/proc/self/incident-gate\.sqlite}, 'saying why';
    my $s = decode_json(($broken->status)[1]);
    like $s->{engine_start_failure}{error}, qr{/proc/self}, 'the status shows the failed start';
    is $s->{intake}{rejected}{engine_unavailable}, 1, 'and counts the refused event';
    is $s->{intake}{last_refused}{event}, 'openqa_job_done', 'naming the last refused event';
    # a line with more than ASCII arrives as characters, not as UTF-8 bytes to be encoded again
    my $named = $lib->gate(encode_json({openqa_url => 'http://127.0.0.1:9', state_dir => "/proc/self/z\x{e4}hler \x{2192}"}));
    $named->submit('openqa_job_done', '{"id":1,"result":"passed"}');
    is scalar @lines, 2, 'its line too';
    like $lines[1][1], qr{/proc/self/z\x{e4}hler \x{2192}}, 'with its path as characters';
    is $lib->log_poll, IG_OK, 'ig_log_poll';
    is scalar @lines, 2, 'nothing new';
    is $lib->on_log(undef), IG_OK, 'back to stderr';
};
# the gate below retries an openQA that is not there: its warnings are expected, keep them here
my @expected_log;
$lib->on_log(sub { push @expected_log, "@_" });

subtest 'ig_gate_flush and ig_gate_evaluate' => sub {
    my ($status, $error) = $gate->flush(200);
    is $status, IG_TIMEOUT, 'IG_TIMEOUT: the events wait for openQA to answer (it never drops them)';
    like $error, qr/200 ms/, 'saying how long it waited';
    my $idle = $lib->gate($config);
    is(($idle->flush(5000))[0], IG_OK, 'a gate with nothing queued flushes at once');
    my $st;
    ($st, $error) = $gate->evaluate(0);
    is $st, IG_INVALID_ARGUMENT, 'incident 0 is IG_INVALID_ARGUMENT';
    ($st, $error) = $gate->evaluate(12345);
    is $st, IG_UNAVAILABLE, 'IG_UNAVAILABLE when openQA does not answer';
    like $error, qr/\S/, "with a message ($error)";
};

cmp_ok threads(), '>', $threads_before, 'the gate runs threads of its own';

subtest 'ig_gate_metrics' => sub {
    my ($status, $lines) = $gate->metrics;
    is $status, IG_OK, 'IG_OK while openQA does not answer: the state directory is all it reads';
    like $lines, qr/^incident_gate,url=\S+,kind=ibs,result=passed decisions=0i$/m, 'decisions by kind and result';
    like $lines, qr/^incident_gate,url=\S+,sink=ibs backlog=0i,/m, 'the outbox by sink';
    like $lines, qr/^incident_gate,url=\S+ evaluations=\d+i,/m, 'the rest';
};

undef $gate;
is threads(), $threads_before, 'ig_gate_free stopped them before it returned';

done_testing;

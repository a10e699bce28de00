# Event handling in one process against the real library: openQA's recorded events are taken;
# garbage, rejected events and a full queue are logged and never break the request that emitted
# them, nor the subscribers after the plugin; the event data stays untouched; nothing blocks.
# openQA is not reachable here (port 9), so the gate keeps every event queued.
use v5.20;
use feature 'signatures';
no warnings 'experimental::signatures';
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib", "$FindBin::Bin/../lib";
use IGTest qw(library write_ini new_app log_lines emit emit_args tempdir OPERATOR);
use Mojo::File 'path';
use Mojo::IOLoop::Server;
use Mojo::Promise;
use Mojo::JSON qw(decode_json encode_json);
use Storable 'dclone';

my $events = do { require OpenQA::Events; OpenQA::Events->singleton };

sub app_with {
    my (%extra) = @_;
    new_app(write_ini({incident_gate => {library => library(), openqa_url => 'http://127.0.0.1:9',
        state_dir => tempdir(CLEANUP => 1), publish_amqp => 'false', report_obs => 'false', %extra}}));
}
sub warnings_of { grep {/^\[warn\] IncidentGate/} log_lines($_[0]) }
sub seen { $_[0]->app->defaults->{ig_test_seen} }

subtest "openQA's recorded events" => sub {
    my $t = app_with();
    my @lines = split /\n/, path($FindBin::Bin, '..', '..', 'tests', 'fixtures', 'openqa', 'webui-events.jsonl')->slurp;
    is scalar @lines, 28, 'the 28 recorded events';
    my %expected;
    for my $line (@lines) {
        my $args = decode_json($line)->{args}[0];
        $expected{$args->[2]}++;
        $events->emit($args->[2], $args);
    }
    # job_create too: a new job restarts the quiet period (issue 12)
    my $handled = 28;
    is $expected{openqa_job_create}, 11, 'all 28 are of a kind the plugin handles, 11 of them job_create';
    is_deeply [warnings_of($t)], [], 'none rejected' or diag join "\n", log_lines($t);
    is scalar @{seen($t)}, $handled, 'all reached the next subscriber';
    $t->get_ok('/api/v1/incident_gate/internals' => OPERATOR)->status_is(200)->json_is('/intake/accepted' => $handled)
      ->json_is('/running' => Mojo::JSON::true)->json_is('/pid' => $$)
      ->json_is('/intake/rejected' => {unknown_event => 0, invalid_json => 0, invalid_shape => 0, queue_full => 0,
        engine_unavailable => 0});
};

subtest "comment events openQA emits without a job: single and bulk deletions, bulk creation" => sub {
    my $t = app_with();
    # openqa_comment_delete carries the comment id as the URL spelled it; the bulk events come
    # from upstream's POST/DELETE /api/v1/comments
    emit(openqa_comment_delete => {id => '3'});
    emit(openqa_comments_delete => {ids => ['3', '4'], deleted => 2});
    emit(openqa_comments_create => {created => [{id => 5, job_id => '9'}], failed => [{job_id => '99'}]});
    is_deeply [warnings_of($t)], [], 'all taken' or diag join "\n", log_lines($t);
    $t->get_ok('/api/v1/incident_gate/internals' => OPERATOR)->status_is(200)->json_is('/intake/accepted' => 3);
};

subtest 'event data stays untouched' => sub {
    my $t = app_with();
    my $data = {id => 7, newbuild => undef, reason => undef, result => 'passed'};
    my $restart = {auto => 0, id => '2', result => {2 => 12}};
    my ($before, $before_restart) = (dclone($data), dclone($restart));
    emit(openqa_job_done => $data);
    emit(openqa_job_restart => $restart);
    is_deeply $data, $before, 'job_done data unchanged';
    is_deeply $restart, $before_restart, 'restart data unchanged';
    is_deeply seen($t), [[openqa_job_done => '{"id":7,"newbuild":null,"reason":null,"result":"passed"}'],
        [openqa_job_restart => '{"auto":0,"id":"2","result":{"2":12}}']], 'the next subscriber sees the same JSON types';
    $t->get_ok('/api/v1/incident_gate/internals' => OPERATOR)->json_is('/intake/accepted' => 2);
};

subtest 'garbage and rejected events are logged, the request goes on' => sub {
    my $t = app_with();
    my $circular = {id => 1};
    $circular->{self} = $circular;
    my @cases = (
        [openqa_job_done => {result => 'passed'}, qr/not taken \(IG_INVALID_EVENT\): openqa_job_done: missing job `id`/],
        [openqa_job_done => {id => 'abc'}, qr/\(IG_INVALID_EVENT\): .*`id` must be a positive job id/],
        [openqa_job_cancel => undef, qr/openqa_job_cancel event not taken \(IG_INVALID_EVENT\): .*JSON object/],
        [openqa_comment_create => 'text', qr/\(IG_INVALID_EVENT\)/],
        [openqa_jobs_restart => {}, qr/\(IG_INVALID_EVENT\): .*restart names no job/],
        [openqa_job_done => bless({}, 'Bomb'), qr/openqa_job_done event not taken: boom$/],
        [openqa_job_done => $circular, qr/openqa_job_done event not taken: event data nested too deeply$/],
    );
    for my $case (@cases) {
        my ($name, $data, $re) = @$case;
        ok eval { emit($name => $data); 1 }, "emitting $name does not die" or diag $@;
        my @w = warnings_of($t);
        like $w[-1], $re, '... and one warning says why' or diag join "\n", log_lines($t);
    }
    is scalar(warnings_of($t)), scalar @cases, 'one warning per event';
    ok eval { $events->emit(openqa_job_done => 'not an array'); 1 }, 'arguments that are no array do not die';
    like((warnings_of($t))[-1], qr/openqa_job_done event not taken: event arguments are not \[/, '... logged');
    is scalar @{seen($t)}, @cases + 1, 'every event reached the next subscriber';
    $t->get_ok('/ping')->status_is(200);
    $t->get_ok('/api/v1/incident_gate/internals' => OPERATOR)->status_is(200)->json_is('/intake/accepted' => 0)
      ->json_is('/intake/rejected/invalid_shape' => 5);

    # through HTTP, as a worker's upload would: the request that emits still succeeds
    $t->post_ok('/test/emit' => json => emit_args(openqa_job_done => {id => -3}))->status_is(200);
    like((warnings_of($t))[-1], qr/IG_INVALID_EVENT/, 'logged');
};

subtest 'a full queue is logged, never waited for' => sub {
    my $t = app_with(queue_capacity => 1);
    # openQA is unreachable, so the engine is slow to take events off the queue: an emit that
    # waited for room would log no event as not taken
    emit(openqa_job_done => {id => $_, result => 'passed', newbuild => undef, reason => undef}) for 1 .. 50;
    my @full = grep {/not taken \(IG_QUEUE_FULL\): intake queue is full/} warnings_of($t);
    cmp_ok scalar @full, '>=', 48, 'at most two fit into a queue of one (one waits in the engine)';
    is scalar @{seen($t)}, 50, 'all reached the next subscriber';
    $t->get_ok('/api/v1/incident_gate/internals' => OPERATOR)->json_is('/intake/rejected/queue_full' => scalar @full);
};

subtest 'verdict route: bad input and openQA not answering' => sub {
    my $t = app_with();
    $t->get_ok('/api/v1/incident_gate/incidents/0')->status_is(400)->json_like('/error' => qr/positive number/);
    $t->get_ok('/api/v1/incident_gate/incidents/123456789012345678901')->status_is(400);
    $t->get_ok('/api/v1/incident_gate/incidents/abc')->status_is(404);
    $t->get_ok('/api/v1/incident_gate/incidents/12345')->status_is(503)->json_is('/status' => 'IG_UNAVAILABLE')
      ->json_like('/error' => qr/\S/);
    $t->get_ok('/ping')->status_is(200);
    is_deeply [grep {/^\[error\]/} log_lines($t)], [], 'no error logged';
};

subtest 'verdict route: openQA refusing is 502, not 503' => sub {
    # every request answered 403: openQA will answer the same however often it is asked
    my $body = '{"error":"Forbidden","error_status":403}';
    my $reply = "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: "
      . length($body) . "\r\nConnection: close\r\n\r\n$body";
    my $port = Mojo::IOLoop::Server->generate_port;
    my $refuse = Mojo::IOLoop->server({address => '127.0.0.1', port => $port} => sub ($loop, $stream, $id) {
        $stream->on(read => sub { $stream->write($reply => sub { $stream->close }) });
    });
    my $t = app_with(openqa_url => "http://127.0.0.1:$port");
    for my $route (qw(incidents/12345 submissions/git:124)) {
        $t->get_ok("/api/v1/incident_gate/$route")->status_is(502, $route)
          ->json_is('/status' => 'IG_OPENQA_REFUSED')->json_like('/error' => qr/HTTP 403: Forbidden/);
    }
    Mojo::IOLoop->remove($refuse);
};

subtest 'verdict route: an evaluation that does not end is stopped' => sub {
    # openQA accepts the connection and never answers; the library would wait its HTTP timeout
    my $port = Mojo::IOLoop::Server->generate_port;
    my $silent = Mojo::IOLoop->server({address => '127.0.0.1', port => $port} => sub { });
    my $t = app_with(openqa_url => "http://127.0.0.1:$port", http_timeout_s => 600);
    no warnings 'once';
    local $OpenQA::WebAPI::Plugin::IncidentGate::EVALUATION_TIMEOUT = 1;
    # more than MAX_EVALUATIONS in a row: each stopped child frees its place
    for my $try (1 .. 3) {
        $t->get_ok('/api/v1/incident_gate/incidents/12345')->status_is(504, "try $try")
          ->json_like('/error' => qr/no verdict within 1 s/);
    }
    Mojo::IOLoop->remove($silent);
};

subtest 'submission route: kind and number' => sub {
    my $t = app_with();
    for my $bad (qw(git:0 pr:5 git: 0 git:123456789012345678901 ibs:x)) {
        $t->get_ok("/api/v1/incident_gate/submissions/$bad")->status_is(400, $bad)
          ->json_like('/error' => qr/git:<pr>/);
    }
    for my $good (qw(git:124 gitea:124 ibs:124 124)) {
        $t->get_ok("/api/v1/incident_gate/submissions/$good")->status_is(503, "$good reaches the library")
          ->json_is('/status' => 'IG_UNAVAILABLE');
    }
};

subtest 'verdict route: at most two evaluations at a time per worker' => sub {
    # an openQA that accepts connections and never answers keeps evaluations busy
    my @held;
    my $port = Mojo::IOLoop::Server->generate_port;
    my $hang = Mojo::IOLoop->server({address => '127.0.0.1', port => $port} => sub { push @held, $_[1] });
    my $t = app_with(openqa_url => "http://127.0.0.1:$port", http_timeout_s => 1);
    my @answers;
    my @requests = map {
        my $n = $_;
        Mojo::Promise->timer(0.05 * $n)->then(sub { $t->ua->get_p('/api/v1/incident_gate/incidents/12345') })
          ->then(sub ($tx) { push @answers, [$tx->res->code, $tx->res->json] });
    } 0 .. 2;
    Mojo::Promise->all(@requests)->wait;
    is scalar @answers, 3, 'three answers';
    my @busy = grep { ($_->[1]{error} // '') =~ /too many verdicts/ } @answers;
    is scalar @busy, 1, 'the third request is turned away at once';
    is $busy[0][0], 503, '... with 503';
    is scalar(grep { ($_->[1]{status} // '') eq 'IG_UNAVAILABLE' } @answers), 2, 'the other two ran and found openQA unavailable';
    $t->get_ok('/api/v1/incident_gate/incidents/12345')->status_is(503)->json_is('/status' => 'IG_UNAVAILABLE',
        'once they finished, evaluations are taken again');
    Mojo::IOLoop->remove($hang);
};

package Bomb {
    sub TO_JSON { die "boom\n" }
}

done_testing;

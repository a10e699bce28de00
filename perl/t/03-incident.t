# End to end in one web UI process: jobs of a simulated incident finish on the openQA simulator,
# the plugin gets openQA's job_done events, and the library decides: one `incident.done` message
# on the real RabbitMQ, the qam-openqa review accepted on the OBS simulator, and the routes show it.
use v5.20;
use warnings;
use utf8;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib", "$FindBin::Bin/../lib";
use IGTest qw(library write_ini new_app log_lines emit start_sim wait_for tempdir unique OPERATOR);
use IGTest::AMQP;
use Mojo::JSON 'decode_json';

my $sim = start_sim();
my $amqp = IGTest::AMQP->new;
my $exchange = unique();
$amqp->declare_exchange($exchange);
$amqp->bind_queue($exchange, '#.incident.done');
my $prefix = unique();    # other tests publish on the same exchange: ours carry this prefix
my ($incident, $request) = (12345, 300001);

sub ours { grep { $_->{routing_key} eq "$prefix.openqa.incident.done" } @_ }
sub review_state { $sim->request($request)->at('review[by_group="qam-openqa"]')->attr('state') }

$sim->create_release_request($request);
is review_state(), 'new', 'the release request waits for the qam-openqa review';
my $group = $sim->{groups}{incidents} // $sim->create_group('Maintenance: SLE 15 SP6 Incidents');
my @jobs = $sim->create_incident_jobs(incident => $incident, request => $request, group => $group,
    tests => [qw(mau-extratests qam-minimal mau-webserver)]);
is scalar @jobs, 3, 'three incident jobs scheduled';

my $state_dir = tempdir(CLEANUP => 1);
my $t = new_app(write_ini({
    global => {base_url => $sim->{openqa}, plugins => 'IncidentGate'},
    incident_gate => {
        library => library(), amqp_url => $ENV{AMQP_URL} // 'amqp://guest:guest@127.0.0.1:5672/%2f',
        amqp_topic_prefix => $prefix, amqp_exchange => $exchange, obs_url => $sim->{obs},
        obs_user => $sim->{obs_user}, obs_password => $sim->{obs_password}, review_policy => 'accept-onpass',
        state_dir => $state_dir,
    }}));
is_deeply [grep {/^\[(error|warn)\]/} log_lines($t)], [], 'the plugin started without complaint';

$t->get_ok("/api/v1/incident_gate/incidents/$incident")->status_is(200)->json_is('/result' => 'pending')
  ->json_is('/incident' => $incident)->json_is('/request' => $request)->json_is('/jobs/total' => 3)
  ->json_is('/jobs/pending' => 3);

for my $id (@jobs[0, 1]) {
    $sim->set_done($id, 'passed');
    emit(openqa_job_done => {id => $id, newbuild => undef, reason => undef, result => 'passed'});
}
is_deeply [ours($amqp->get_all(2))], [], 'no message while a job is still scheduled';
is review_state(), 'new', 'the review is untouched';

$sim->set_done($jobs[2], 'passed');
emit(openqa_job_done => {id => $jobs[2], newbuild => undef, reason => undef, result => 'passed'});
my ($msg) = ours($amqp->get_all(5));
$msg //= wait_for(sub { (ours($amqp->get_all(1)))[0] }, 30);
ok $msg, 'incident.done published once the last job is done' or die "no incident.done message: the rest of this file depends on it\n";
is $msg->{exchange}, $exchange, 'on the configured exchange';
is $msg->{content_type}, 'application/json', 'as JSON';
is $msg->{delivery_mode}, 2, 'persistent';
like $msg->{message_id}, qr/\S/, 'with a message id for deduplication';
my $body = decode_json($msg->{body});
is $body->{incident}, $incident, 'for the incident';
is $body->{request}, $request, 'and its release request';
is $body->{rrid}, "SUSE:Maintenance:$incident:$request", 'RRID';
is $body->{result}, 'passed', 'passed';
is $body->{jobs}{total}, 3, 'over three jobs';
is $body->{jobs}{passed}, 3, 'all passed';
is_deeply $body->{blocking}, [], 'nothing blocks';

ok wait_for(sub { review_state() eq 'accepted' }, 30), 'the qam-openqa review is accepted on OBS';
is_deeply [ours($amqp->get_all(2))], [], 'and no second message';

$t->get_ok("/api/v1/incident_gate/incidents/$incident")->status_is(200)->json_is('/result' => 'passed')
  ->json_is('/jobs/passed' => 3)->json_is('/jobs/pending' => 0);
$t->get_ok('/api/v1/incident_gate/internals' => OPERATOR)->status_is(200)->json_is('/intake/accepted' => 3)
  ->json_is('/engine/decisions' => 1)->json_is('/engine/recent_decisions/0/incident' => $incident)
  ->json_is('/engine/recent_decisions/0/result' => 'passed')
  ->json_is('/engine/recent_decisions/0/key' => $msg->{message_id})
  ->json_is('/config/obs_user' => $sim->{obs_user})->json_has('/engine/recent_decisions/0/deliveries');

subtest 'the public status shows decisions, not configuration or deliveries' => sub {
    $t->get_ok('/api/v1/incident_gate/status')->status_is(200)
      ->json_is('/recent_decisions/0' => {incident => $incident, request => $request, result => 'passed',
        decided_at => $t->tx->res->json('/recent_decisions/0/decided_at')})
      ->json_is('/pending_incidents' => [])->json_hasnt('/config')->json_hasnt('/intake')->json_hasnt('/engine');
    my $body = $t->tx->res->body;
    for my $internal ($sim->{obs_user}, $sim->{obs}, $state_dir, '127.0.0.1:5672', 'deliveries', 'outcome') {
        unlike $body, qr/\Q$internal\E/, "no $internal";
    }
    $t->get_ok('/api/v1/incident_gate/internals')->status_is(403)->json_is('/error' => 'no api key');
    $t->get_ok('/api/v1/incident_gate/internals' => {'X-API-Key' => 'IGTEST-USER'})->status_is(403)
      ->json_is('/error' => 'Operator level required');
};

subtest "the library's log is in the app's log" => sub {
    my $decided = qr/^\[info\] IncidentGate: incident $incident: passed \(request $request, 3 jobs,/;
    ok wait_for(sub { grep {/$decided/} log_lines($t) }, 10), 'the decision, logged by the engine'
      or diag join "\n", log_lines($t);
    ok((grep {/^\[info\] IncidentGate: incident $incident → obs: /} log_lines($t)), 'the IBS delivery')
      or diag join "\n", log_lines($t);
};

subtest 'openQA going away: the verdict route answers 503, the app keeps serving' => sub {
    undef $sim;    # stops the simulators
    $t->get_ok("/api/v1/incident_gate/incidents/$incident")->status_is(503)->json_is('/status' => 'IG_UNAVAILABLE')
      ->json_like('/error' => qr/\S/);
    $t->get_ok('/ping')->status_is(200);
};

done_testing;

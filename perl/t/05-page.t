# The incidents page in the plugin's test app (no openQA layout there: a plain one): incidents the
# library decided or waits for, their states, the filters, one incident explained, and nothing of
# the configuration shown to anyone.
use v5.20;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib", "$FindBin::Bin/../lib";
use IGTest qw(library write_ini new_app emit start_sim wait_for tempdir unique);
use IGTest::AMQP;

my $sim = start_sim();
my $group = $sim->{groups}{incidents} // $sim->create_group('Maintenance: SLE 15 SP6 Incidents');
my $state_dir = tempdir(CLEANUP => 1);
my $exchange = unique();
my $amqp = IGTest::AMQP->new;
$amqp->declare_exchange($exchange);
# the exchange is auto-delete: it goes with its last queue, so it needs one (or it stays forever)
$amqp->bind_queue($exchange, '#.incident.done');
my $t = new_app(write_ini({
    global => {base_url => $sim->{openqa}, plugins => 'IncidentGate'},
    incident_gate => {
        library => library(), amqp_url => $ENV{AMQP_URL} // 'amqp://guest:guest@127.0.0.1:5672/%2f',
        amqp_topic_prefix => unique(), amqp_exchange => $exchange, obs_url => $sim->{obs},
        obs_user => $sim->{obs_user}, obs_password => $sim->{obs_password}, review_policy => 'accept-onpass',
        state_dir => $state_dir, coverage => 'sle/15-SP6/*/aarch64: aggregate',
    }}));

$t->get_ok('/incident_gate')->status_is(200)->text_like('h2' => qr/^Incidents/)
  ->element_exists('#ig-empty', 'no incident yet');

my %jobs;
for my $case ([51001, 'passed', 'passed'], [51002, 'passed', 'failed'], [51003, 'passed', undef]) {
    my ($incident, @results) = @$case;
    my $rr = 400000 + $incident;
    $sim->create_release_request($rr);
    my @ids = $sim->create_incident_jobs(incident => $incident, request => $rr, group => $group,
        tests => [qw(mau-extratests qam-minimal)]);
    $jobs{$incident} = \@ids;
    for my $i (0, 1) {
        next unless defined $results[$i];
        $sim->set_done($ids[$i], $results[$i]);
        emit(openqa_job_done => {id => $ids[$i], newbuild => undef, reason => undef, result => $results[$i]});
    }
}

sub states {
    my $list = $t->ua->get('/api/v1/incident_gate/incidents')->result->json;
    return {map { ($_->{submission} // $_->{incident}) => $_->{state} } @{$list->{incidents} // []}};
}
ok wait_for(sub { my $s = states(); ($s->{51001} // '') eq 'reported' && ($s->{51002} // '') eq 'failed'
      && ($s->{51003} // '') eq 'pending' }, 30), 'the library knows the three incidents'
  or diag explain states();

$t->get_ok('/api/v1/incident_gate/incidents')->status_is(200)->json_is('/total' => 3)
  ->json_is('/incidents/0/incident' => 51003, 'newest first: the one still waiting')
  ->json_is('/states/reported' => 1);

subtest 'the list: every incident with its state, linked to its explanation' => sub {
    $t->get_ok('/incident_gate')->status_is(200);
    my $dom = $t->tx->res->dom;
    my @rows = $dom->find('#ig-incidents tbody tr')->map(sub { [$_->attr('data-incident'), $_->attr('data-state')] })->each;
    is_deeply \@rows, [[51003, 'pending'], [51002, 'failed'], [51001, 'reported']], 'newest first, with states';
    is $dom->at('#ig-incident-51003 .ig-state')->text, 'waiting for jobs', 'waiting for jobs';
    is $dom->at('#ig-incident-51001 .ig-state')->text, 'reported', 'reported';
    like $dom->at('#ig-incident-51002 .ig-why')->text, qr/request 451002: comment posted/, 'what IBS was told';
    is $dom->at('#ig-incident-51002 a.ig-incident-link')->attr('href'), '/incident_gate/51002', 'linked';
};

subtest 'filters by state and search by number' => sub {
    $t->get_ok('/incident_gate?state=failed')->status_is(200);
    is_deeply [$t->tx->res->dom->find('#ig-incidents tbody tr')->map(attr => 'data-incident')->each], [51002],
      'failed only';
    $t->element_exists('#ig-state option[value="failed"][selected]', 'the filter stays selected');
    $t->get_ok('/incident_gate?q=1001')->status_is(200);
    is_deeply [$t->tx->res->dom->find('#ig-incidents tbody tr')->map(attr => 'data-incident')->each], [51001],
      'by number';
    $t->get_ok('/incident_gate?state=no_jobs')->status_is(200)->element_exists('#ig-empty');
    $t->get_ok('/incident_gate?state=<script>&q=x<y')->status_is(200)->element_exists('#ig-incidents')
      ->content_unlike(qr/<script>/, 'nonsense filters are ignored, never echoed');
};

subtest 'one incident explained' => sub {
    my ($ok, $bad) = @{$jobs{51002}};
    $t->get_ok('/incident_gate/51002')->status_is(200)->text_is('#ig-result' => 'failed')
      ->element_exists("#ig-counting tr.table-danger[data-job=\"$bad\"]", 'the blocking job stands out')
      ->element_exists("#ig-counting a[href=\"/tests/$bad\"]", 'linked to openQA')
      ->text_like("#ig-counting tr[data-job=\"$bad\"] td:last-child" => qr/failed: blocks/, 'why it counts')
      ->text_like("#ig-counting tr[data-job=\"$ok\"] td:last-child" => qr/passed/)
      ->text_like('#ig-expected' => qr/Nothing/, 'nothing more expected')
      ->element_exists('#ig-decisions tr[data-result="failed"]', 'the decision')
      ->element_exists('#ig-decisions li.ig-delivery[data-sink="amqp"][data-state="done"]', 'published')
      ->element_exists('#ig-decisions li.ig-delivery[data-sink="obs"][data-state="done"]', 'reported to IBS')
      ->text_like('#ig-decisions li.ig-delivery[data-sink="obs"]' => qr/request 451002: comment posted/);
    $t->get_ok('/incident_gate/51003')->status_is(200)->text_is('#ig-result' => 'waiting for jobs')
      ->text_like('#ig-expected li' => qr/still scheduled/, 'the job still expected')
      ->element_exists('#ig-no-decisions');
    $t->get_ok('/incident_gate/0')->status_is(400)->text_like('#ig-error' => qr/positive number/);
    $t->get_ok('/incident_gate/abc')->status_is(404);
};

subtest 'nothing of the configuration is shown' => sub {
    for my $path ('/incident_gate', '/incident_gate/51002', '/incident_gate/51001', '/api/v1/incident_gate/incidents') {
        $t->get_ok($path)->status_is(200);
        my $body = $t->tx->res->body;
        for my $internal ($sim->{obs_password}, $sim->{obs}, $state_dir, $exchange, '5672', 'guest') {
            unlike $body, qr/\Q$internal\E/, "$path: no $internal";
        }
    }
};

subtest 'waiting for expected coverage, and a pull request beside the incidents' => sub {
    # aarch64 needs an aggregate job listing the incident (the coverage policy): none exists
    my $incident = 51005;
    $sim->create_release_request(400000 + $incident);
    my @ids = $sim->create_incident_jobs(incident => $incident, request => 400000 + $incident, group => $group,
        tests => ['mau-extratests'], arch => 'aarch64');
    my $pr = 51006;
    push @ids, $sim->openqa(POST => '/api/v1/jobs', {
        DISTRI => 'sle', VERSION => '16.0', FLAVOR => 'Online', ARCH => 'x86_64', MACHINE => '64bit',
        TEST => 'mau-extratests', BUILD => ":git:$pr:openssl", SUBMISSION_ID => "git:$pr", _GITEA_PR => $pr,
        GITEA_REPO => 'products/SLFO', GITEA_SHA => 'a' x 40, _GROUP_ID => $group})->{id};
    for my $id (@ids) {
        $sim->set_done($id, 'passed');
        emit(openqa_job_done => {id => $id, newbuild => undef, reason => undef, result => 'passed'});
    }
    ok wait_for(sub { my $s = states(); ($s->{$incident} // '') eq 'coverage' && ($s->{"git:$pr"} // '') eq 'passed' },
        30), 'the incident waits for coverage, the pull request is decided'
      or diag explain states();
    $t->get_ok('/incident_gate?state=coverage')->status_is(200)
      ->text_is("#ig-incident-$incident .ig-state" => 'waiting for expected coverage')
      ->text_like("#ig-incident-$incident .ig-why" => qr/aggregate/, 'what is expected');
    $t->get_ok("/incident_gate/$incident")->status_is(200)
      ->element_exists('#ig-expected li.ig-wait[data-kind="coverage"]', 'still expected: the coverage');
    $t->get_ok('/incident_gate')->status_is(200)
      ->element_exists("#ig-incident-git-$pr\[data-kind=gitea][data-state=passed]", 'the pull request by kind');
    is $t->tx->res->dom->at("#ig-incident-git-$pr a.ig-incident-link")->attr('href'), "/incident_gate/git:$pr",
      'linked by kind and number';
    $t->get_ok("/incident_gate/git:$pr")->status_is(200)->text_like('h2' => qr/^Pull request $pr/)
      ->element_exists('#ig-result[data-result="passed"]', 'its verdict, asked by kind');
    $t->get_ok('/incident_gate/pr:1')->status_is(404);
};

subtest 'delivery pending, and why, without the error that names the configuration' => sub {
    my $missing = unique();    # an exchange nobody declared: the broker refuses every publish
    my $t2 = new_app(write_ini({
        global => {base_url => $sim->{openqa}, plugins => 'IncidentGate'},
        incident_gate => {
            library => library(), amqp_url => $ENV{AMQP_URL} // 'amqp://guest:guest@127.0.0.1:5672/%2f',
            amqp_topic_prefix => unique(), amqp_exchange => $missing, obs_url => $sim->{obs},
            obs_user => $sim->{obs_user}, obs_password => $sim->{obs_password}, state_dir => tempdir(CLEANUP => 1),
            # no catch-up: it would find the earlier subtests' incidents in the simulator, decide
            # them anew in this state directory and queue their failing publishes before ours
            catchup_max_requests => 0,
        }}));
    my $incident = 51004;
    $sim->create_release_request(400000 + $incident);
    my ($id) = $sim->create_incident_jobs(incident => $incident, request => 400000 + $incident, group => $group,
        tests => ['mau-extratests']);
    $sim->set_done($id, 'passed');
    emit(openqa_job_done => {id => $id, newbuild => undef, reason => undef, result => 'passed'});
    ok wait_for(sub {
        my $l = $t2->ua->get("/api/v1/incident_gate/incidents?q=$incident")->result->json;
        ($l->{incidents}[0]{deliveries}[0]{attempts} // 0) > 0 && ($l->{incidents}[0]{state} // '') eq 'delivery_pending';
    }, 30), 'a publish was tried'
      or diag explain [$t2->ua->get("/api/v1/incident_gate/incidents?q=$incident")->result->json,
        $t2->ua->get('/api/v1/incident_gate/status')->result->json];
    $t2->get_ok('/incident_gate?state=delivery_pending')->status_is(200)
      ->element_exists("#ig-incident-$incident\[data-state=delivery_pending]")
      ->text_like("#ig-incident-$incident .ig-why" => qr/^amqp: not delivered yet, retrying \(\d+ attempts? so far\)$/)
      ->content_unlike(qr/\Q$missing\E/, 'the broker error names the exchange: not shown');
    $t2->get_ok("/incident_gate/$incident")->status_is(200)
      ->element_exists('#ig-decisions li.ig-delivery[data-sink="amqp"][data-state="queued"]', 'the delivery waits')
      ->content_unlike(qr/\Q$missing\E/);
};

done_testing;

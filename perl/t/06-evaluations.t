# Many clients asking for live verdicts at once (the JSON routes and the incident page): the
# askers of one submission share one evaluation, a bounded number run at once, one more waits for
# a place and is then turned away with 503 and Retry-After (the page showing the last verdict it
# had, and its age), and a number without jobs costs openQA one evaluation, not one per request.
# The openQA simulator holds its answers while a test lines requests up, so nothing here depends
# on how fast anything is.
use v5.20;
use warnings;
use feature 'signatures';
no warnings 'experimental::signatures';
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib", "$FindBin::Bin/../lib";
use IGTest qw(library write_ini new_app log_lines emit start_sim wait_for tempdir unique OPERATOR);
use IncidentGate::Evaluations;

# one evaluation at a time, one more submission may wait (2 s) for the place; a verdict is asked
# anew each time (but in the subtest about reuse), and nobody turned away is given an older one
# instead (that is 08-shared-evaluations.t's)
%IncidentGate::Evaluations::DEFAULTS = (%IncidentGate::Evaluations::DEFAULTS, max => 1, queue => 1, wait => 2, fresh => 0, stale => 0);

my $sim = start_sim();
my $group = $sim->{groups}{incidents} // $sim->create_group('Maintenance: SLE 15 SP6 Incidents');
my ($one, $two, $three) = (61001, 61002, 61003);
my %jobs;
for my $incident ($one, $two, $three) {
    my @ids = @{$jobs{$incident}} = $sim->create_incident_jobs(incident => $incident, request => 400000 + $incident, group => $group,
        tests => [qw(mau-extratests qam-minimal)]);
    $sim->set_done($ids[0], 'passed');
}
my $t = new_app(write_ini({
    global => {base_url => $sim->{openqa}, plugins => 'IncidentGate'},
    incident_gate => {
        library => library(), amqp_url => 'amqp://guest:guest@127.0.0.1:5672/%2f', amqp_exchange => unique(),
        obs_url => $sim->{obs}, obs_user => $sim->{obs_user}, obs_password => $sim->{obs_password},
        state_dir => tempdir(CLEANUP => 1),
    }}));
my $held = 0;
END { $sim->hold(0) if $held && $sim }
sub hold ($on) { $sim->hold($held = $on) }

# The plugin's evaluation counters, asked without blocking the event loop the app runs on.
sub stats () {
    my $s;
    $t->ua->get_p('/api/v1/incident_gate/internals' => OPERATOR)->then(sub ($tx) { $s = $tx->res->json('/evaluations') })
      ->wait;
    return $s;
}

sub wait_stats ($cond) {
    my ($s, $asking);
    return wait_for(
        sub {
            $asking ||= $t->ua->get_p('/api/v1/incident_gate/internals' => OPERATOR)
              ->then(sub ($tx) { $s = $tx->res->json('/evaluations'); $asking = undef });
            return $s && $cond->($s) ? $s : undef;
        },
        30
    );
}

# Sends the GETs at once; a promise of their transactions, in order.
sub all_p (@paths) { Mojo::Promise->all(map { $t->ua->get_p($_) } @paths)->then(sub (@r) { map { $_->[0] } @r }) }

sub finish ($p) {
    my @tx;
    $p->then(sub (@r) { @tx = @r })->wait;
    return @tx;
}

# what one evaluation of $one costs openQA, alone
my $before = $sim->requests;
$t->get_ok("/api/v1/incident_gate/incidents/$one")->status_is(200)->json_is('/result' => 'pending');
my $cost = $sim->requests - $before;
ok $cost >= 3, "one evaluation of $one asks openQA $cost times";

subtest 'concurrent askers of one submission share one evaluation, whichever route they take' => sub {
    my $s0 = stats();
    my $requests = $sim->requests;
    hold(1);
    my @paths = ((map {"/api/v1/incident_gate/incidents/$one"} 1 .. 4),
        (map {"/api/v1/incident_gate/submissions/ibs:$one"} 1 .. 3), ("/incident_gate/$one") x 3);
    my $all = all_p(@paths);
    ok wait_stats(sub ($s) { $s->{shared} - $s0->{shared} == @paths - 1 }), 'all but the first asker wait for its answer'
      or diag explain stats();
    ok $sim->requests > $requests, 'the first asker\'s evaluation is asking openQA';
    hold(0);
    my @tx = finish($all);
    is_deeply [map { $_->res->code } @tx], [(200) x @paths], 'every asker is answered 200';
    is_deeply [map { $_->res->json('/result') } @tx[0 .. 6]], [('pending') x 7], 'with the verdict';
    is_deeply [map { $_->res->dom->at('#ig-result')->attr('data-result') } @tx[7 .. 9]], [('pending') x 3],
      'the page shows it too';
    is $sim->requests - $requests, $cost, "openQA was asked as for one evaluation ($cost requests)";
    is stats()->{started} - $s0->{started}, 1, 'one child evaluated';
};

subtest 'over the bound: an asker waits for a place and gets it' => sub {
    # long enough for any machine: this is about getting the place, not about the wait ending
    local $IncidentGate::Evaluations::DEFAULTS{wait} = 60;
    my $s0 = stats();
    hold(1);
    my $first = all_p("/api/v1/incident_gate/incidents/$one");
    ok wait_stats(sub ($s) { $s->{running} == 1 }), "$one is being evaluated";
    my $second = all_p("/api/v1/incident_gate/incidents/$two");
    ok wait_stats(sub ($s) { $s->{waiting} == 1 }), "$two waits for the place";
    hold(0);
    my ($tx_a) = finish($first);
    my ($tx_b) = finish($second);
    is $tx_a->res->code, 200, "$one answered";
    is $tx_b->res->code, 200, "$two answered once $one was done";
    is $tx_b->res->json('/result'), 'pending', "with ${two}'s verdict";
    is stats()->{turned_away} - $s0->{turned_away}, 0, 'nobody turned away';
};

subtest 'over the bound: waits, then 503 with Retry-After; the page shows the last verdict and its age' => sub {
    my $s0 = stats();
    hold(1);
    my $first = all_p("/api/v1/incident_gate/incidents/$one");
    ok wait_stats(sub ($s) { $s->{running} == 1 }), "$one is being evaluated";
    my $requests = $sim->requests;
    my $waiting = all_p("/api/v1/incident_gate/incidents/$two", "/incident_gate/$two");
    ok wait_stats(sub ($s) { $s->{waiting} == 1 && $s->{shared} - $s0->{shared} == 1 }),
      "the API and the page wait together for a place for $two";
    # the only place to wait is taken: no wait
    $t->get_ok("/api/v1/incident_gate/incidents/$three")->status_is(503)
      ->header_like('Retry-After' => qr/^[1-9][0-9]*$/)
      ->json_is('/error' => 'too many verdicts are being evaluated, try again shortly');
    my ($api, $page) = finish($waiting);
    is $api->res->code, 503, "no place for $two within the wait: 503";
    like $api->res->headers->header('Retry-After') // '', qr/^[1-9][0-9]*$/, 'with Retry-After';
    is $page->res->code, 503, 'the page too';
    like $page->res->headers->header('Retry-After') // '', qr/^[1-9][0-9]*$/, 'with Retry-After';
    my $dom = $page->res->dom;
    like $dom->at('#ig-verdict-error')->text, qr/too many verdicts are being evaluated/, 'saying why';
    is $dom->at('#ig-result')->attr('data-result'), 'pending', "and ${two}'s last verdict";
    like $dom->at('#ig-verdict-age')->attr('data-age'), qr/^[0-9]+$/, 'with its age';
    like $dom->at('#ig-verdict-age')->text, qr/asked from openQA [0-9]+ s ago/, 'in words';
    is $sim->requests, $requests, 'openQA was not asked for what was turned away';
    hold(0);
    my ($tx_a) = finish($first);
    is $tx_a->res->code, 200, "$one answered";
    my $s = stats();
    is $s->{started} - $s0->{started}, 1, "only $one was evaluated";
    is $s->{turned_away} - $s0->{turned_away}, 2, "$two (its API asker and page share it) and $three turned away";
};

subtest 'a page turned away before any verdict of its own says so, with nothing made up' => sub {
    hold(1);
    my $first = all_p("/api/v1/incident_gate/incidents/$one");
    ok wait_stats(sub ($s) { $s->{running} == 1 }), "$one is being evaluated";
    my $waiting = all_p("/api/v1/incident_gate/incidents/$two");
    ok wait_stats(sub ($s) { $s->{waiting} == 1 }), "$two waits";
    $t->get_ok("/incident_gate/$three")->status_is(503)->header_like('Retry-After' => qr/^[1-9][0-9]*$/)
      ->text_like('#ig-verdict-error' => qr/too many verdicts/)->element_exists_not('#ig-result');
    hold(0);
    finish($first);
    finish($waiting);
};

subtest 'a number without jobs costs one evaluation, not one per request' => sub {
    my $s0 = stats();
    my $requests = $sim->requests;
    $t->get_ok('/api/v1/incident_gate/incidents/987654321')->status_is(200)->json_is('/result' => 'no_jobs');
    my $once = $sim->requests - $requests;
    ok $once > 0, "the first asks openQA ($once requests)";
    $t->get_ok('/api/v1/incident_gate/submissions/ibs:0987654321')->status_is(200)->json_is('/result' => 'no_jobs');
    $t->get_ok('/incident_gate/987654321')->status_is(200)->element_exists('#ig-result[data-result="no_jobs"]');
    is $sim->requests - $requests, $once, 'the others ask openQA nothing';
    is stats()->{reused} - $s0->{reused}, 2, 'the answer was reused';
    $requests = $sim->requests;
    $t->get_ok("/api/v1/incident_gate/incidents/$one")->status_is(200)->json_is('/result' => 'pending');
    is $sim->requests - $requests, $cost, 'a verdict with jobs is always asked anew';
};

subtest 'a verdict is given again, with its age, for a while after its evaluation' => sub {
    my $requests = $sim->requests;
    $t->get_ok("/api/v1/incident_gate/incidents/$one")->status_is(200)->json_is('/result' => 'pending')
      ->header_is(Age => 0, 'asked just now');
    is $sim->requests - $requests, $cost, 'the first asks openQA';
    local $IncidentGate::Evaluations::DEFAULTS{fresh} = 3600;
    $requests = $sim->requests;
    $t->get_ok("/api/v1/incident_gate/submissions/ibs:$one")->status_is(200)->json_is('/result' => 'pending')
      ->header_like(Age => qr/^[0-9]+$/);
    $t->get_ok("/incident_gate/$one")->status_is(200)->element_exists('#ig-result[data-result="pending"]');
    is $sim->requests, $requests, 'the others within the while ask openQA nothing';
    local $IncidentGate::Evaluations::DEFAULTS{fresh} = 0;
    $t->get_ok("/api/v1/incident_gate/incidents/$one")->status_is(200)->header_is(Age => 0);
    is $sim->requests - $requests, $cost, 'after it, openQA is asked again';
};

subtest 'a number nobody could use is refused before anything is asked' => sub {
    my $requests = $sim->requests;
    $t->get_ok('/api/v1/incident_gate/incidents/0')->status_is(400);
    $t->get_ok('/api/v1/incident_gate/incidents/99999999999999999999')->status_is(400);
    $t->get_ok('/api/v1/incident_gate/submissions/obs:5')->status_is(400);
    $t->get_ok('/incident_gate/12345678901234567890')->status_is(400);
    is $sim->requests, $requests, 'openQA was not asked';
};

subtest 'an event in this process ends the while: the next asker gets a new verdict' => sub {
    local $IncidentGate::Evaluations::DEFAULTS{fresh} = 3600;
    $t->get_ok("/api/v1/incident_gate/incidents/$three")->status_is(200)->json_is('/result' => 'pending');
    $t->get_ok("/api/v1/incident_gate/incidents/$three")->status_is(200)->json_is('/result' => 'pending')
      ->header_like(Age => qr/^[0-9]+$/);
    $sim->set_done($jobs{$three}[1], 'passed');
    $t->get_ok("/api/v1/incident_gate/incidents/$three")->status_is(200)->json_is('/result' => 'pending',
        'without an event: the verdict of a moment ago');
    emit(openqa_job_done => {id => $jobs{$three}[1], newbuild => undef, reason => undef, result => 'passed'});
    $t->get_ok("/api/v1/incident_gate/incidents/$three")->status_is(200)->json_is('/result' => 'passed')
      ->header_is(Age => 0);
};

subtest 'askers that went away before their verdict are no error (verdict route and page)' => sub {
    my $s0 = stats();
    my $lines = () = log_lines($t);
    hold(1);
    my $gone = Mojo::UserAgent->new(request_timeout => 1);
    $gone->server->app($t->app);
    my $code;
    my @codes;
    Mojo::Promise->all(map { $gone->get_p($_)->then(sub ($tx) { $tx->res->code }, sub ($e) {$e}) }
          "/api/v1/incident_gate/incidents/$one", "/incident_gate/$two")->then(sub (@r) { @codes = map { $_->[0] } @r })
      ->wait;
    like $_, qr/timeout/i, 'the asker gave up' for @codes;
    hold(0);
    ok wait_stats(sub ($s) { $s->{running} == 0 && $s->{started} - $s0->{started} == 2 }), 'the evaluations ended';
    # (this test's exchange does not exist: the publisher's errors are not what this is about)
    my @new = (log_lines($t))[$lines .. $#{[log_lines($t)]}];
    is_deeply [grep { /^\[error\]/ && !/exchange/ } @new], [], 'and nothing was logged as an error';
};

subtest 'Retry-After when openQA cannot be asked' => sub {
    undef $sim;
    $t->get_ok("/api/v1/incident_gate/incidents/$one")->status_is(503)->json_is('/status' => 'IG_UNAVAILABLE')
      ->header_like('Retry-After' => qr/^[1-9][0-9]*$/);
};

done_testing;

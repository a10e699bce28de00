# The plugin inside `openqa prefork` with two workers, one of them killed (kill -9) at random points
# of a stream of incidents: openQA's prefork manager starts another. What a killed worker held only
# in memory (events not yet recorded pending) is found again by the catch-up from openQA. Counts:
# every incident decided, once (one event_id), every review accepted.
use v5.20;
use feature "signatures";
no warnings "experimental::signatures";
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../t/lib", "$FindBin::Bin/../lib";
use IGTest qw(library);
use IGTest::RealOpenQA;
use IGTest::Scenarios qw(new_world);

use constant INCIDENTS => $ENV{IG_INCIDENTS} // 12;

my $w = new_world(base => 13000);
my %key = (openqa_api_key => IGTest::RealOpenQA::API_KEY, openqa_api_secret => IGTest::RealOpenQA::API_SECRET);
my $oq = IGTest::RealOpenQA->start(workers => 2, plugin => 1, exchange => $w->{exchange}, prefix => $w->{prefix},
    ini => {incident_gate => {library => library(), %{$w->gate_section(undef, %key, reconcile_interval_s => 2)}}});

# a kept-alive connection may belong to the worker just killed: one connection per request
$oq->ua->max_connections(0);

# until the prefork manager replaced the killed worker (its pid gone, two workers again)
sub replaced ($killed) {
    for (1 .. 100) {
        my @w = $oq->workers;
        return 1 if @w >= 2 && !grep { $_ == $killed } @w;
        select undef, undef, undef, 0.1;
    }
    return 0;
}

# set_done until openQA has the job done: a request to the worker being killed gets no answer
sub finish ($id) {
    for (1 .. 20) {
        eval { $oq->set_done($id, 'passed') };
        my $job = eval { $oq->job($id) } // {};
        return 1 if ($job->{state} // '') eq 'done';
        select undef, undef, undef, 0.2;
    }
    return 0;
}

my $seed = $ENV{IG_SEED} // $$;
srand $seed;
my ($kills, %requests) = (0);
for my $n (1 .. INCIDENTS) {
    my ($i, $rr) = (13000 + $n, 313000 + $n);
    $w->release_request($rr);
    $requests{$i} = $rr;
    my @jobs = map { IGTest::Scenarios::incident_job($oq, $i, $rr, "t$_") } 1 .. 2;
    ok finish($_), "job $_ of $i done" or die "openQA does not finish jobs\n" for @jobs;
    next if rand() > 0.35;
    select undef, undef, undef, rand() * 0.05;
    my @w = $oq->workers;
    my $victim = $w[int rand @w] // next;
    kill 'KILL', $victim;
    $kills++;
    ok replaced($victim), "worker $victim killed and replaced";
}

my ($decided, $distinct, $accepted) = (0, 0, 0);
for my $i (sort keys %requests) {
    # a delivery the killed worker had taken stays leased by it for 60 s (LEASE_S), then another
    # worker makes it, with the same event_id: the broker's and IBS's each
    my @m = $w->await_done($i, 1, 90);
    $decided++ if @m;
    my %ids = map { ($_->{json}{event_id} // '') => 1 } @m;
    $distinct += keys %ids;
    $accepted++ if $w->await_review($requests{$i}, "accepted", 90);
}
diag "worker kill -9 stream (seed $seed): ${\INCIDENTS} incidents, $kills kills; decided $decided; "
  . "distinct decisions $distinct; reviews accepted $accepted; workers now: @{[$oq->workers]}";
is $decided, INCIDENTS, 'every incident decided';
is $distinct, INCIDENTS, 'each once (one event_id)';
is $accepted, INCIDENTS, 'every review accepted';
done_testing;

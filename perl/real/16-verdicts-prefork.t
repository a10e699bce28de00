# Many clients asking for live verdicts of a real openQA run as openQA's service runs it (`prefork
# -c 1`: a worker serves one connection at a time) with three workers (issue 24). Each evaluation is
# a child asking openQA, which only the other workers can answer: when every worker held a verdict
# request, no child was answered until its HTTP timeout, and every asker got 503 "openQA could not
# be asked" (IG_UNAVAILABLE) after it. Now the workers share two places: whoever finds none is
# answered at once (a verdict another worker evaluated moments ago, or 503 with Retry-After), and
# nobody waits for openQA's HTTP timeout.
use v5.20;
use warnings;
use feature 'signatures';
no warnings 'experimental::signatures';
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../t/lib", "$FindBin::Bin/../lib";
use IGTest qw(library);
use IGTest::RealOpenQA;
use IGTest::Scenarios qw(new_world incident_job);
use Mojo::Promise;
use Mojo::UserAgent;

my $w = new_world(base => 16000);
# a deadlock shows within the timeout: an answer later than it is openQA's timeout, never a verdict
my $oq = IGTest::RealOpenQA->start(workers => 3, plugin => 1, exchange => $w->{exchange}, prefix => $w->{prefix},
    ini => {incident_gate => {library => library(), %{$w->gate_section(undef, http_timeout_s => 10)}}});
ok((grep { /IncidentGate: libincident_gate/ } $oq->log_lines), 'openQA loaded the plugin');

my %result;
for my $n (1 .. 4) {
    my ($i, $rr) = (16000 + $n, 316000 + $n);
    my @jobs = map { incident_job($oq, $i, $rr, $_) } qw(qam-minimal mau-extratests);
    # one passed, one scheduled: pending; one failed, one passed: failed
    $oq->set_done($jobs[0], $n % 2 ? 'passed' : 'failed');
    $oq->set_done($jobs[1], 'passed') unless $n % 2;
    $result{$i} = $n % 2 ? 'pending' : 'failed';
}
my @incidents = sort keys %result;

# 12 clients at once, each on a connection of its own, more than the workers
my $clients = 12;
my @ua = map { Mojo::UserAgent->new(request_timeout => 60, inactivity_timeout => 60) } 1 .. $clients;
my (%codes, @wrong, $verdicts);
for my $round (1 .. 4) {
    my @asked = map { $incidents[($_ + $round) % @incidents] } 0 .. $clients - 1;
    my @p = map { $ua[$_]->get_p($oq->url . "/api/v1/incident_gate/incidents/$asked[$_]") } 0 .. $clients - 1;
    my @tx;
    Mojo::Promise->all(@p)->then(sub (@r) { @tx = map { $_->[0] } @r })->catch(sub ($e) { fail "a request failed: $e" })
      ->wait;
    for my $k (0 .. $#tx) {
        my ($res, $i) = ($tx[$k]->res, $asked[$k]);
        my $code = $res->code // 0;
        $codes{$code}++;
        my $json = $res->json // {};
        if ($code == 200) {
            $verdicts++;
            push @wrong, "$i: result $json->{result}" unless ($json->{result} // '') eq $result{$i};
        }
        elsif ($code == 503) {
            push @wrong, "$i: 503 without Retry-After" unless ($res->headers->header('Retry-After') // '') =~ /^[1-9]\d*$/;
            push @wrong, "$i: 503 $json->{error}" unless ($json->{error} // '') =~ /too many verdicts are being evaluated/;
        }
        else { push @wrong, "$i: $code " . ($res->body =~ s/\s+/ /gr) }
    }
}
diag 'answers by status: ' . join(', ', map {"$_: $codes{$_}"} sort keys %codes);
is_deeply \@wrong, [], 'every asker got its verdict, or 503 "too many" with Retry-After: none waited for a timeout';
ok $verdicts, "$verdicts verdicts given";

# afterwards, alone: each verdict, asked from openQA or given again by any worker
for my $i (@incidents) {
    my $res = $ua[0]->get($oq->url . "/api/v1/incident_gate/incidents/$i")->res;
    is $res->code, 200, "$i answered alone";
    is $res->json('/result'), $result{$i}, "$i: $result{$i}";
}
is_deeply [$oq->alarming_lines], [], 'openQA logged no errors';
done_testing;

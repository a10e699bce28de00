# The incidents page inside the real openQA web UI, seen in a real browser: scenarios run through
# openQA's REST API, then headless Chromium (Debian's, driven by playwright-core from
# tests/browser) opens the page in openQA's own layout, checks the incidents and their states, uses
# the filters, clicks through to one explanation and takes screenshots (into a temporary directory;
# IG_SCREENSHOT_DIR=docs refreshes the ones docs/ and the README show).
# Without Chromium or playwright-core the file is skipped, unless CI is set: then it fails.
use v5.20;
use warnings;
use utf8;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../t/lib", "$FindBin::Bin/../lib";
use Mojo::File 'path';
use Mojo::JSON 'decode_json';
use IGTest qw(library wait_for tempdir);
use IGTest::Scenarios qw(new_world);
use IGTest::RealOpenQA;

my $root = path($FindBin::Bin)->dirname->dirname;
my $browser = $root->child('tests', 'browser');
my $chromium = $ENV{CHROMIUM} // '/usr/bin/chromium';
my $missing = !-x $chromium ? "no $chromium (apt-get install chromium)"
  : !-d $browser->child('node_modules', 'playwright-core') ? 'no playwright-core (npm ci in tests/browser; scripts/test does it)'
  : undef;
if ($missing) {
    plan skip_all => $missing unless $ENV{CI};
    plan tests => 1;
    fail "CI is set but the browser test cannot run: $missing";
    exit;
}
my $shots = path($ENV{IG_SCREENSHOT_DIR} // tempdir(CLEANUP => 1));

my $w = new_world(base => 40000);
my $oq = IGTest::RealOpenQA->start(workers => 0, plugin => 1, exchange => $w->{exchange}, prefix => $w->{prefix},
    ini => {incident_gate => {library => library(), %{$w->gate_section(undef)}}});
my $n = $w->{base};
my ($passed, $failed, $accepted, $waiting) = map { $n + $_ } 1 .. 4;
sub job { IGTest::Scenarios::incident_job($oq, @_) }

# passed and reported: the review accepted
$w->release_request(300000 + $passed);
$oq->set_done($_, 'passed') for map { job($passed, 300000 + $passed, $_) } qw(mau-extratests qam-minimal);
# failed, in a group whose description names whom to contact
my $contacts = $oq->create_group('Maintenance: SLE 15 SP6 Kernel Incidents',
    description => "Kernel maintenance tests.\nResponsible: \@qam-kernel, jane\@example.com\n");
$w->release_request(300000 + $failed);
my $ok = job($failed, 300000 + $failed, 'qam-minimal');
my $bad = job($failed, 300000 + $failed, 'mau-extratests', _GROUP_ID => $contacts);
$oq->set_done($ok, 'passed');
$oq->set_done($bad, 'failed');
# a failure accepted for this incident by a comment
$w->release_request(300000 + $accepted, 'qam-sle');
my $acc = job($accepted, 300000 + $accepted, 'mau-extratests');
my $comment = $oq->comment($acc, "\@review:acceptable_for:incident_$accepted:known issue bsc#1");
$oq->set_done($acc, 'failed');
# still waiting for a job
$w->release_request(300000 + $waiting);
my ($done, $scheduled) = map { job($waiting, 300000 + $waiting, $_) } qw(mau-extratests qam-minimal);
$oq->set_done($done, 'passed');

sub states {
    my $res = $oq->ua->get("$oq->{url}/api/v1/incident_gate/incidents")->result;
    return {} unless $res->is_success;
    return {map { $_->{incident} => $_->{state} } @{$res->json->{incidents} // []}};
}
my %want = ($passed => 'reported', $failed => 'failed', $accepted => 'reported', $waiting => 'pending');
ok wait_for(sub { my $s = states(); !grep { ($s->{$_} // '') ne $want{$_} } keys %want }, 60),
  'the plugin knows the four incidents with their states' or diag explain states();

subtest 'IBS comments link to the page and name whom to contact' => sub {
    # `_` is percent-encoded in Markdown links (it would start emphasis); openQA decodes it
    ok $w->await_comment(300000 + $failed, qr{\]\(\Q$oq->{url}\E/incident(?:_|%5F)gate/$failed\)}),
      'the failure comment links the page' or diag explain [$w->ibs_comments(300000 + $failed)];
    my ($text) = $w->ibs_comments(300000 + $failed);
    my ($link) = $text =~ m{\[Why: incident $failed explained on openQA\]\(([^)]+)\)};
    is $oq->ua->get($link)->result->code, 200, "the link opens the incident's page";
    like $text, qr/Whom to contact for the blocking jobs:\n\n- Maintenance: SLE 15 SP6 Kernel Incidents: &#64;qam-kernel, jane&#64;example.com/,
      'the Responsible line of the blocking job group';
    unlike $text, qr/Maintenance: SLE 15 SP6 Incidents:/, 'only groups with a blocking job';
    my @m = $w->await_done($failed);
    is $m[0]{json}{page}, "$oq->{url}/incident_gate/$failed", 'incident.done links the page';
};

subtest 'the page in openQA: anonymous users see decisions, never the configuration' => sub {
    my $res = $oq->ua->get("$oq->{url}/incident_gate")->result;
    is $res->code, 200, 'served';
    like $res->body, qr/id="all_tests"/, "in openQA's layout with its navigation";
    my $gate = $w->gate_section(undef);
    for my $internal ($gate->{obs_password}, $gate->{obs_url}, $gate->{state_dir}, $w->{exchange}) {
        unlike $res->body, qr/\Q$internal\E/, "no $internal";
    }
    my $detail = $oq->ua->get("$oq->{url}/incident_gate/$failed")->result;
    is $detail->code, 200, 'the explanation';
    unlike $detail->body, qr/\Q$gate->{obs_url}\E|\Q$w->{exchange}\E/, 'without service addresses';
};

subtest 'in a real browser' => sub {
    my ($list_png, $incident_png) = map { $shots->child($_) } qw(incidents-page.png incident-explained.png);
    unlink $list_png, $incident_png;
    my @cmd = ('node', $browser->child('incidents-page.js')->to_string, $oq->url, $failed, "$list_png", "$incident_png");
    my $out = qx{@cmd};
    is $?, 0, 'the browser script ran' or return;
    my $seen = decode_json($out);
    is $seen->{list_status}, 200, 'the page loads';
    like $seen->{title}, qr/openQA: Incidents/, "openQA's title";
    is $seen->{navbar}, 1, "openQA's navigation bar";
    is_deeply $seen->{errors}, [], 'no script errors';
    my %rows = map { $_->{incident} => $_ } @{$seen->{rows}};
    is_deeply {map { $_ => $rows{$_}{state} } keys %want}, \%want, 'each incident with its state';
    is $rows{$waiting}{label}, 'waiting for jobs', 'as users read it';
    is $seen->{rows}[0]{incident}, $waiting, 'newest first';
    is_deeply $seen->{failed_filter}, [$failed], 'the state filter';
    is_deeply $seen->{search}, [$failed], 'the search by number';
    like $seen->{incident_url}, qr{/incident_gate/$failed$}, 'a click leads to the explanation';
    like $seen->{heading}, qr/^Incident $failed failed/, 'of that incident';
    is $seen->{result}, 'failed', 'its verdict, asked from openQA';
    is_deeply $seen->{blocking}, [$bad], 'the blocking job';
    is_deeply $seen->{blocking_links}, ["/tests/$bad"], 'linked to its openQA page';
    is_deeply $seen->{contacts}, ['Maintenance: SLE 15 SP6 Kernel Incidents: @qam-kernel, jane@example.com'],
      'whom to contact, from the job group description';
    my %sinks = map { $_->{sink} => $_ } @{$seen->{deliveries}};
    is $sinks{amqp}{state}, 'done', 'published';
    like $sinks{obs}{text}, qr/IBS: done after 1 attempt — request @{[300000 + $failed]}: comment posted/,
      'what was sent to IBS';
    for my $png ($list_png, $incident_png) {
        is substr(-f $png ? $png->slurp : "", 0, 8), "\x89PNG\r\n\x1a\n", "a PNG screenshot of the page in " . $png->basename;
    }
};

subtest 'an accepted failure links its comment' => sub {
    my $res = $oq->ua->get("$oq->{url}/incident_gate/$accepted")->result;
    my $dom = $res->dom;
    is $dom->at('#ig-result')->text, 'passed', 'passed';
    is $dom->at('#ig-accepted a.ig-comment-link')->attr('href'), "/tests/$acc#comment-$comment", 'the comment';
    like $dom->at('#ig-accepted li')->all_text, qr/known issue bsc#1/, 'its reason';
};

is_deeply [$oq->alarming_lines], [], 'openQA logged no errors';
done_testing;
